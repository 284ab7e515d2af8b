//! Reading what the test guest prints on its serial port.
//!
//! The guest prints `TEST <name> PASS`, `TEST <name> FAIL <why>`, and for a benchmark one
//! `RESULT {json}` line. Shared by xtask and the VMM's end-to-end tests.

/// One self-test outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestOutcome {
    /// Test name as printed by the guest.
    pub name: String,
    /// `None` when it passed or was skipped, the guest's reason when it failed.
    pub failure: Option<String>,
    /// The guest's reason when it did not run (`SKIP`: the device lacks what it tests).
    pub skipped: Option<String>,
}

/// Everything of interest in one guest run's output.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct GuestReport {
    /// Self-tests in the order the guest ran them.
    pub tests: Vec<TestOutcome>,
    /// The JSON text of each `RESULT` line.
    pub results: Vec<String>,
}

impl GuestReport {
    /// Parses serial output. Lines may carry a `\r` or leading noise before the keyword.
    pub fn parse(output: &str) -> Self {
        let mut report = GuestReport::default();
        for line in output.lines() {
            let line = line.trim_end_matches('\r');
            if let Some(rest) = after_keyword(line, "TEST ") {
                if let Some(outcome) = parse_test(rest) {
                    report.tests.push(outcome);
                }
            } else if let Some(rest) = after_keyword(line, "RESULT ") {
                report.results.push(rest.trim().to_string());
            }
        }
        report
    }

    /// Tests that failed.
    pub fn failed(&self) -> impl Iterator<Item = &TestOutcome> {
        self.tests.iter().filter(|t| t.failure.is_some())
    }

    /// Number of tests that passed.
    pub fn passed(&self) -> usize {
        self.tests
            .iter()
            .filter(|t| t.failure.is_none() && t.skipped.is_none())
            .count()
    }

    /// Tests that did not run (`SKIP`).
    pub fn skipped(&self) -> impl Iterator<Item = &TestOutcome> {
        self.tests.iter().filter(|t| t.skipped.is_some())
    }
}

/// The last `n` lines of a guest's output, for an error message.
pub fn tail(out: &str, n: usize) -> String {
    let lines: Vec<&str> = out.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn after_keyword<'a>(line: &'a str, keyword: &str) -> Option<&'a str> {
    line.find(keyword)
        .filter(|&i| i == 0 || !line.as_bytes()[i - 1].is_ascii_alphanumeric())
        .map(|i| &line[i + keyword.len()..])
}

fn parse_test(rest: &str) -> Option<TestOutcome> {
    let mut parts = rest.splitn(3, ' ');
    let name = parts.next()?.to_string();
    match parts.next()? {
        "PASS" => Some(TestOutcome {
            name,
            failure: None,
            skipped: None,
        }),
        "FAIL" => Some(TestOutcome {
            name,
            failure: Some(parts.next().unwrap_or("").to_string()),
            skipped: None,
        }),
        "SKIP" => Some(TestOutcome {
            name,
            failure: None,
            skipped: Some(parts.next().unwrap_or("").to_string()),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pass_fail_and_results() {
        let out = "boot\nTEST rw-pattern PASS\r\nTEST flush FAIL status 1 at sector 7\nRESULT {\"iops\": 5}\nTESTS passed=1 failed=1\n";
        let r = GuestReport::parse(out);
        assert_eq!(r.tests.len(), 2);
        assert_eq!(
            r.tests[0],
            TestOutcome {
                name: "rw-pattern".into(),
                failure: None,
                skipped: None,
            }
        );
        assert_eq!(r.tests[1].failure.as_deref(), Some("status 1 at sector 7"));
        assert_eq!(r.passed(), 1);
        assert_eq!(r.failed().count(), 1);
        assert_eq!(r.results, vec!["{\"iops\": 5}".to_string()]);
    }

    #[test]
    fn a_skip_is_neither_a_pass_nor_a_failure() {
        let r = GuestReport::parse(
            "TEST discard SKIP VIRTIO_BLK_F_DISCARD not offered
TEST a PASS
",
        );
        assert_eq!(
            (r.passed(), r.failed().count(), r.skipped().count()),
            (1, 0, 1)
        );
        assert_eq!(
            r.tests[0].skipped.as_deref(),
            Some("VIRTIO_BLK_F_DISCARD not offered")
        );
    }

    #[test]
    fn ignores_lines_that_only_look_alike() {
        let r = GuestReport::parse("TESTS passed=3 failed=0\nLATEST x PASS\nTEST half\n");
        assert!(r.tests.is_empty());
    }
}
