//! A reload never moves a listener's mail to a pipeline nobody chose for it:
//! renaming a bound pipeline, dropping a `{daemon_name}` from every
//! `daemon_names`, or putting another pipeline first is refused, and the
//! running configuration goes on serving.

use crate::common;

use common::daemon::{TestDaemon, open_greeted, reject_with};
use indymilter_test::Status;

/// Listener 0 chooses by `{daemon_name}`; listener 1 is bound to the
/// submission pipeline, whose policy refuses everything. Renaming it in the
/// file renames it in `[server]` too, which only a restart applies.
fn config(submission: &str, names: &str) -> String {
    format!(
        r#"
[[server.listen]]
address = "inet:127.0.0.1:0"

[[server.listen]]
address = "inet:127.0.0.1:0"
pipeline = "{submission}"

[pipelines.mx]

[pipelines.{submission}]
daemon_names = [{names}]
[pipelines.{submission}.default]
action = "reject"
reply = {{ code = 554, status = "5.7.1", text = "submission needs AUTH" }}
"#
    )
}

fn refused() -> Status {
    reject_with("554 5.7.1 submission needs AUTH")
}

async fn rcpt_status(d: &TestDaemon, listener: usize, daemon_name: &str) -> Status {
    let mut conn = open_greeted(d.tcp(listener), daemon_name).await;
    conn.mail(["<a@example.net>"]).await.unwrap();
    conn.rcpt(["<b@example.org>"]).await.unwrap()
}

/// Each refused reload leaves the submission pipeline serving both ways in.
async fn submission_still_served(d: &TestDaemon) {
    assert_eq!(rcpt_status(d, 1, "anything").await, refused());
    assert_eq!(rcpt_status(d, 0, "submission").await, refused());
    assert_eq!(rcpt_status(d, 0, "smtpd").await, Status::Continue);
}

#[tokio::test]
async fn reloads_that_would_move_a_service_to_another_pipeline_are_refused() {
    let d = TestDaemon::start(&config("submission", "\"submission\"")).await;
    submission_still_served(&d).await;

    for (bad, expected) in [
        (
            config("submit", "\"submission\""),
            "is bound to pipeline \"submission\", which the new configuration no longer has",
        ),
        (
            config("submission", ""),
            "{daemon_name} \"submission\" selects pipeline \"submission\", and no pipeline of the new configuration lists it",
        ),
        (
            config("submission", "\"submission\"").replace("[pipelines.mx]\n", "")
                + "[pipelines.mx]\n",
            "the first pipeline, which serves connections no `daemon_names` list selects, would change from \"mx\" to \"submission\"",
        ),
    ] {
        d.rewrite_config(&bad);
        let errors = d
            .daemon()
            .reload()
            .await
            .expect_err("the reload must be refused")
            .to_string();
        assert!(errors.contains(expected), "{errors}");
        submission_still_served(&d).await;
    }

    // A reload that keeps every service where it was goes through.
    d.rewrite_config(&config("submission", "\"submission\", \"msa\""));
    d.daemon()
        .reload()
        .await
        .expect("a harmless reload is applied");
    assert_eq!(rcpt_status(&d, 0, "msa").await, refused());
}
