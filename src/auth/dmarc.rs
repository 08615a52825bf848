//! DMARC (RFC 9989): the record parser (`record`), the evaluation
//! (`evaluate`: tree walk, alignment, the policy that applies) and the
//! message's store of policy records (`lookups`). The `dmarc` check
//! (crate::checks::dmarc) feeds it the SPF and DKIM facts of the message's
//! [`Evidence`](super::Evidence) and maps the outcome to a check result.

pub mod evaluate;
pub mod lookups;
pub mod record;
