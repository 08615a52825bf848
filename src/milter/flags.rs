//! The bit sets exchanged at negotiation: what the milter may do at end of
//! message (`SMFIF_*`) and which commands and replies the MTA and the milter
//! leave out (`SMFIP_*`). The names are the protocol's own, without the
//! prefix, so that they read like Sendmail's `mfdef.h` and Postfix's
//! `milter8.c`.

bitflags::bitflags! {
    /// The actions a milter may take at end of message (`SMFIF_*`). The MTA
    /// offers a set in its negotiation command; the milter answers with the
    /// subset it needs, and may send only those edits.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct Actions: u32 {
        /// Add headers (`SMFIF_ADDHDRS`): add and insert header replies.
        const ADDHDRS = 0x0001;
        /// Replace the body (`SMFIF_CHGBODY`).
        const CHGBODY = 0x0002;
        /// Add recipients (`SMFIF_ADDRCPT`).
        const ADDRCPT = 0x0004;
        /// Delete recipients (`SMFIF_DELRCPT`).
        const DELRCPT = 0x0008;
        /// Change and delete headers (`SMFIF_CHGHDRS`).
        const CHGHDRS = 0x0010;
        /// Quarantine the message (`SMFIF_QUARANTINE`).
        const QUARANTINE = 0x0020;
        /// Change the envelope sender (`SMFIF_CHGFROM`).
        const CHGFROM = 0x0040;
        /// Add recipients with ESMTP parameters (`SMFIF_ADDRCPT_PAR`).
        const ADDRCPT_PAR = 0x0080;
        /// Ask for other macros per stage in the negotiation reply
        /// (`SMFIF_SETSYMLIST`).
        const SETSYMLIST = 0x0100;
    }
}

bitflags::bitflags! {
    /// Protocol options (`SMFIP_*`): commands the milter does not want
    /// (`NO*`), commands it will not answer (`NR_*`) and extensions. The MTA
    /// offers a set; the milter answers with the subset it wants.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct ProtocolOptions: u32 {
        /// Do not send connect (`SMFIP_NOCONNECT`).
        const NOCONNECT = 0x0000_0001;
        /// Do not send HELO (`SMFIP_NOHELO`).
        const NOHELO = 0x0000_0002;
        /// Do not send MAIL (`SMFIP_NOMAIL`).
        const NOMAIL = 0x0000_0004;
        /// Do not send RCPT (`SMFIP_NORCPT`).
        const NORCPT = 0x0000_0008;
        /// Do not send the body (`SMFIP_NOBODY`).
        const NOBODY = 0x0000_0010;
        /// Do not send headers (`SMFIP_NOHDRS`).
        const NOHDRS = 0x0000_0020;
        /// Do not send end of headers (`SMFIP_NOEOH`).
        const NOEOH = 0x0000_0040;
        /// No reply to each header (`SMFIP_NR_HDR`, once `SMFIP_NOHREPL`).
        const NR_HDR = 0x0000_0080;
        /// Do not send unknown SMTP commands (`SMFIP_NOUNKNOWN`).
        const NOUNKNOWN = 0x0000_0100;
        /// Do not send DATA (`SMFIP_NODATA`).
        const NODATA = 0x0000_0200;
        /// The MTA understands the skip reply (`SMFIP_SKIP`).
        const SKIP = 0x0000_0400;
        /// Also send recipients the MTA rejected (`SMFIP_RCPT_REJ`).
        const RCPT_REJ = 0x0000_0800;
        /// No reply to connect (`SMFIP_NR_CONN`).
        const NR_CONN = 0x0000_1000;
        /// No reply to HELO (`SMFIP_NR_HELO`).
        const NR_HELO = 0x0000_2000;
        /// No reply to MAIL (`SMFIP_NR_MAIL`).
        const NR_MAIL = 0x0000_4000;
        /// No reply to RCPT (`SMFIP_NR_RCPT`).
        const NR_RCPT = 0x0000_8000;
        /// No reply to DATA (`SMFIP_NR_DATA`).
        const NR_DATA = 0x0001_0000;
        /// No reply to unknown commands (`SMFIP_NR_UNKN`).
        const NR_UNKN = 0x0002_0000;
        /// No reply to end of headers (`SMFIP_NR_EOH`).
        const NR_EOH = 0x0004_0000;
        /// No reply to body chunks (`SMFIP_NR_BODY`).
        const NR_BODY = 0x0008_0000;
        /// Header values keep the white space after the colon, both ways
        /// (`SMFIP_HDR_LEADSPC`).
        const HDR_LEADSPC = 0x0010_0000;
        /// Commands may carry up to 256 KiB of data (`SMFIP_MDS_256K`).
        const MDS_256K = 0x1000_0000;
        /// Commands may carry up to 1 MiB of data (`SMFIP_MDS_1M`).
        const MDS_1M = 0x2000_0000;
    }
}

/// The protocol version this codec speaks (`SMFI_PROT_VERSION`, Sendmail
/// 8.14 and Postfix 2.6 and later).
pub const PROTOCOL_VERSION: u32 = 6;
