//! ESMTP parameters of RCPT TO that a recipient's replacement keeps.
//!
//! When an alias or a rewrite replaces a recipient, the MTA is told to
//! delete it and add the new address; without its parameters the new
//! recipient would lose the sender's delivery-status requests. RFC 3461
//! §6.2.7.3 (aliases) passes `NOTIFY` and `ORCPT` on to each address an
//! alias names, and they are the only ones Postfix takes with a milter's
//! ADDRCPT_PAR. Anything else the client sent stays with the original.

/// The longest parameter kept: RFC 3461 §4.2 bounds ORCPT's value to 500
/// characters; the name and `=` take the rest.
const MAX_PARAMETER: usize = 512;

/// `NOTIFY=` and `ORCPT=` of `args` (the RCPT TO parameters as the MTA gave
/// them), the first of each, joined by a space; `None` when there are none.
/// A parameter that is not printable ASCII without spaces, or is longer
/// than an RFC 3461 value can be, is dropped: it is client text, and the
/// MTA validated the ones it would accept before the milter saw them.
pub(crate) fn kept_rcpt_parameters(args: &[String]) -> Option<String> {
    let mut kept: Vec<&str> = Vec::new();
    for name in ["NOTIFY", "ORCPT"] {
        let found = args.iter().find(|a| {
            a.split_once('=')
                .is_some_and(|(key, _)| key.eq_ignore_ascii_case(name))
        });
        if let Some(arg) = found
            && arg.len() <= MAX_PARAMETER
            && arg.bytes().all(|b| b.is_ascii_graphic())
        {
            kept.push(arg);
        }
    }
    (!kept.is_empty()).then(|| kept.join(" "))
}

#[cfg(test)]
mod tests {
    use super::kept_rcpt_parameters as kept;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn notify_and_orcpt_are_kept_in_that_order() {
        assert_eq!(
            kept(&args(&[
                "ORCPT=rfc822;bob@example.org",
                "NOTIFY=SUCCESS,FAILURE"
            ])),
            Some("NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.org".into())
        );
        assert_eq!(kept(&args(&["notify=NEVER"])), Some("notify=NEVER".into()));
    }

    #[test]
    fn other_parameters_and_hostile_ones_are_dropped() {
        assert_eq!(kept(&args(&[])), None);
        assert_eq!(kept(&args(&["RRVS=2026-01-01T00:00:00Z", "FOO"])), None);
        assert_eq!(kept(&args(&["NOTIFYX=NEVER", "NOTIFY"])), None);
        assert_eq!(kept(&args(&["NOTIFY=NEVER\r\nRCPT TO:<x@y>"])), None);
        assert_eq!(kept(&args(&["NOTIFY=NEVER DELAY"])), None);
        let long = format!("ORCPT=rfc822;{}@example.org", "a".repeat(600));
        assert_eq!(kept(&args(&[&long])), None);
        // The first of each only.
        assert_eq!(
            kept(&args(&["NOTIFY=NEVER", "NOTIFY=SUCCESS"])),
            Some("NOTIFY=NEVER".into())
        );
    }

    proptest::proptest! {
        /// Whatever a client sends, what is passed on is at most one NOTIFY
        /// and one ORCPT, each printable ASCII without spaces and bounded.
        #[test]
        fn only_bounded_printable_notify_and_orcpt_pass(
            args in proptest::collection::vec("(?i:(notify|orcpt|size|x)=)?[\\PC\\s\\x00-\\x1f]{0,600}", 0..6)
        ) {
            if let Some(kept) = kept(&args) {
                let params: Vec<&str> = kept.split(' ').collect();
                proptest::prop_assert!(params.len() <= 2, "{kept:?}");
                for p in params {
                    proptest::prop_assert!(p.len() <= 512);
                    proptest::prop_assert!(p.bytes().all(|b| b.is_ascii_graphic()));
                    let name = p.split('=').next().unwrap_or_default().to_ascii_uppercase();
                    proptest::prop_assert!(name == "NOTIFY" || name == "ORCPT", "{p:?}");
                }
            }
        }
    }
}
