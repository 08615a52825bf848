//! How the engine keeps the body: the chunks the MTA sent, shared rather
//! than copied, up to the pipeline's `max_body_size`, and nothing at all
//! when no check or modifier reads it.

use bytes::Bytes;
use dispatch_milter::checks::{BoxFuture, Check, CheckBuildContext, CheckInput, CheckResult};
use dispatch_milter::config::{Registry, compile_str};
use dispatch_milter::engine::Session;
use dispatch_milter::message::ConnectionFacts;
use dispatch_milter::stage::Stage;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// What the check saw of the body at end of message.
#[derive(Clone, Debug, Default)]
struct Seen {
    /// Start address and length of each chunk.
    chunks: Vec<(usize, usize)>,
    bytes: Vec<u8>,
    truncated: bool,
    size: u64,
}

struct BodyReader {
    seen: Arc<Mutex<Option<Seen>>>,
}

impl Check for BodyReader {
    fn inputs(&self) -> Stage {
        Stage::Eom
    }

    fn needs_body(&self) -> bool {
        true
    }

    fn run(self: Arc<Self>, input: Arc<CheckInput>) -> BoxFuture<CheckResult> {
        Box::pin(async move {
            if let Some(m) = &input.message {
                let seen = Seen {
                    chunks: m
                        .body
                        .chunks()
                        .map(|c| (c.as_ptr() as usize, c.len()))
                        .collect(),
                    bytes: m.body.to_vec(),
                    truncated: m.body_truncated,
                    size: m.size,
                };
                *self.seen.lock().expect("lock") = Some(seen);
            }
            CheckResult::pass()
        })
    }
}

/// Feed one message whose body comes in `chunks`; what the check saw.
async fn feed(pipeline: &str, chunks: &[Bytes]) -> Option<Seen> {
    let seen = Arc::new(Mutex::new(None));
    let mut registry = Registry::builtin();
    let shared = seen.clone();
    registry.add_check(
        "body_reader",
        Arc::new(move |_ctx: &mut CheckBuildContext<'_, '_, '_>| {
            Some(Arc::new(BodyReader {
                seen: shared.clone(),
            }) as Arc<dyn Check>)
        }),
    );
    let src = format!("[checks.reader]\nkind = \"body_reader\"\n{pipeline}");
    let policy = match compile_str(Path::new("test.toml"), &src, &registry) {
        Ok(p) => Arc::new(p),
        Err(e) => panic!("config should compile:\n{e}"),
    };
    let mut s = Session::new(policy, 0, ConnectionFacts::default());
    s.connect().await;
    assert!(s.mail("<a@x.test>", &[], None).await.is_continue());
    assert!(s.rcpt("<b@y.test>", &[]).await.is_continue());
    s.header("Subject", "hi");
    for c in chunks {
        s.body(c.clone());
    }
    s.eom().await;
    seen.lock().expect("lock").clone()
}

fn chunks() -> Vec<Bytes> {
    vec![Bytes::from(vec![b'a'; 1000]), Bytes::from(vec![b'b'; 500])]
}

fn start(b: &Bytes) -> usize {
    b.as_ptr() as usize
}

#[tokio::test]
async fn the_body_is_kept_as_the_chunks_that_came_not_a_copy() {
    let chunks = chunks();
    let seen = feed("[pipelines.p]\nchecks = [\"reader\"]", &chunks)
        .await
        .expect("the check ran");
    assert_eq!(
        seen.chunks,
        vec![(start(&chunks[0]), 1000), (start(&chunks[1]), 500)],
        "the check reads the very buffers the body arrived in"
    );
    let mut expected = vec![b'a'; 1000];
    expected.extend(vec![b'b'; 500]);
    assert_eq!(seen.bytes, expected);
    assert!(!seen.truncated);
    assert_eq!(seen.size, 1500 + "Subject".len() as u64 + 2 + 4);
}

#[tokio::test]
async fn past_max_body_size_the_rest_is_cut_without_copying() {
    let chunks = chunks();
    let seen = feed(
        "[pipelines.p]\nchecks = [\"reader\"]\nmax_body_size = 1200\noversize_action = \"truncate\"",
        &chunks,
    )
    .await
    .expect("the check ran");
    assert_eq!(
        seen.chunks,
        vec![(start(&chunks[0]), 1000), (start(&chunks[1]), 200)],
        "the second chunk is cut at the limit, still in place"
    );
    assert!(seen.truncated);
    assert_eq!(seen.bytes.len(), 1200);
    assert_eq!(
        seen.size,
        1500 + "Subject".len() as u64 + 2 + 4,
        "the whole size still counts"
    );
}
