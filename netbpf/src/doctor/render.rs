//! The report as people read it: the checks in one table per area, then
//! each finding with its cause, evidence and fix.

use std::fmt::Write as _;

use comfy_table::{Table, presets::NOTHING};

use super::{Area, Report, State};

/// The report as text: checks by area, then the findings.
pub fn render(report: &Report) -> String {
    let mut text = String::new();
    for (area, title) in [
        (Area::Host, "Can netbpf run here"),
        (Area::Netbpf, "Is netbpf working"),
        (Area::Reach, "Reaching the address asked about"),
    ] {
        let checks: Vec<_> = report
            .checks
            .iter()
            .filter(|check| check.area == area)
            .collect();
        if checks.is_empty() {
            continue;
        }
        let mut table = Table::new();
        table.load_preset(NOTHING);
        for check in checks {
            let state = match check.state {
                State::Ok => "ok",
                State::Warning => "warning",
                State::Failed => "FAILED",
                State::Info => "",
            };
            table.add_row([state, check.name.as_str(), check.detail.as_str()]);
        }
        let _ = writeln!(text, "{title}\n{table}\n");
    }
    if report.findings.is_empty() {
        text.push_str("No problems found.\n");
        return text;
    }
    let count = report.findings.len();
    let _ = writeln!(
        text,
        "{count} problem{} found:",
        if count == 1 { "" } else { "s" }
    );
    for (number, finding) in report.findings.iter().enumerate() {
        let about: Vec<String> = finding
            .container
            .iter()
            .cloned()
            .chain(finding.port.map(|port| format!("port {port}")))
            .collect();
        let _ = writeln!(
            text,
            "\n{}. {}{}\n   {}",
            number + 1,
            serde_json::to_value(finding.problem)
                .ok()
                .and_then(|name| name.as_str().map(str::to_owned))
                .unwrap_or_default(),
            if about.is_empty() {
                String::new()
            } else {
                format!(" ({})", about.join(", "))
            },
            finding.cause
        );
        for evidence in &finding.evidence {
            let _ = writeln!(text, "   - {evidence}");
        }
        if let Some(policy) = &finding.policy {
            let _ = writeln!(
                text,
                "   Fix: this policy, as a file of the agent's policy directory (then `netbpf reload`):"
            );
            for line in policy.lines() {
                let _ = writeln!(text, "       {line}");
            }
        }
        for step in &finding.steps {
            let _ = writeln!(text, "   Then: {step}");
        }
    }
    text
}
