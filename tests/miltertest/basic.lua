-- One message through dispatch-milter, driven by miltertest (OpenDKIM) as
-- the MTA. Run by tests/it/miltertest.rs against tests/miltertest/basic.toml:
--   miltertest -s tests/miltertest/basic.lua -D port=PORT
-- Any unexpected answer calls fail(): it prints "FAIL: ..." and calls error(),
-- which makes miltertest exit 1.

mt.set_timeout(10)

-- miltertest does not print the message of error(): echo it first, so the
-- Rust test can show it.
local function fail(msg)
	mt.echo("FAIL: " .. msg)
	error(msg)
end

if port == nil then
	fail("define the daemon's port: -D port=PORT")
end

-- Fail with what was expected and what came back.
local function expect_reply(conn, step, want, want_name)
	local got = mt.getreply(conn)
	if got ~= want then
		fail(string.format("%s: expected %s (%q), got %q", step, want_name,
		      string.char(want), type(got) == "number" and string.char(got) or tostring(got)))
	end
end

-- Fail when an mt.* call reports an error (it returns nil on success).
local function ok(step, err)
	if err ~= nil then
		fail(step .. " failed: " .. tostring(err))
	end
end

local conn = mt.connect("inet:" .. port .. "@127.0.0.1", 5, 0.2)
if conn == nil then
	fail("mt.connect() to inet:" .. port .. "@127.0.0.1 failed")
end

-- Offer everything (the libmilter defaults).
ok("mt.negotiate()", mt.negotiate(conn, nil, nil, nil))
if not mt.test_action(conn, SMFIF_ADDHDRS) then
	fail("the milter did not request SMFIF_ADDHDRS")
end
if not mt.test_action(conn, SMFIF_ADDRCPT) then
	fail("the milter did not request SMFIF_ADDRCPT")
end
-- Headers and body chunks never refuse: the milter waives their replies,
-- which saves the MTA a round trip per header and per chunk.
if not mt.test_option(conn, SMFIP_NR_HDR) then
	fail("the milter did not waive header replies (SMFIP_NR_HDR)")
end

ok("mt.conninfo()", mt.conninfo(conn, "client.example.net", "192.0.2.10"))
expect_reply(conn, "conninfo", SMFIR_CONTINUE, "SMFIR_CONTINUE")

ok("mt.helo()", mt.helo(conn, "client.example.net"))
expect_reply(conn, "helo", SMFIR_CONTINUE, "SMFIR_CONTINUE")

mt.macro(conn, SMFIC_MAIL, "i", "MTQID1")
ok("mt.mailfrom()", mt.mailfrom(conn, "<someone@example.net>"))
expect_reply(conn, "mailfrom", SMFIR_CONTINUE, "SMFIR_CONTINUE")

-- Refused with the configured reply (550 5.7.1 ...): a REPLYCODE, not a bare
-- REJECT.
ok("mt.rcptto(blocked)", mt.rcptto(conn, "<nobody@blocked.example>"))
expect_reply(conn, "rcptto <nobody@blocked.example>", SMFIR_REPLYCODE, "SMFIR_REPLYCODE")

ok("mt.rcptto(accepted)", mt.rcptto(conn, "<alice@example.org>"))
expect_reply(conn, "rcptto <alice@example.org>", SMFIR_CONTINUE, "SMFIR_CONTINUE")

ok("mt.header()", mt.header(conn, "Subject", "miltertest"))
expect_reply(conn, "header", SMFIR_CONTINUE, "SMFIR_CONTINUE")
-- The milter has no end-of-headers stage and asks not to be sent it
-- (SMFIP_NOEOH, as libmilter does); an MTA then skips it.
if not mt.test_option(conn, SMFIP_NOEOH) then
	ok("mt.eoh()", mt.eoh(conn))
	expect_reply(conn, "eoh", SMFIR_CONTINUE, "SMFIR_CONTINUE")
end
ok("mt.bodystring()", mt.bodystring(conn, "hello\r\n"))
expect_reply(conn, "bodystring", SMFIR_CONTINUE, "SMFIR_CONTINUE")

ok("mt.eom()", mt.eom(conn))
expect_reply(conn, "eom", SMFIR_CONTINUE, "SMFIR_CONTINUE")

-- The add_header modifier, with {client_ip} from conninfo.
if not mt.eom_check(conn, MT_HDRADD, "X-Dispatch-Test") then
	fail("no X-Dispatch-Test header added")
end
-- With SMFIP_HDR_LEADSPC negotiated the value carries its leading space.
local want = "checked for 192.0.2.10"
if mt.test_option(conn, SMFIP_HDR_LEADSPC) then
	want = " " .. want
end
if not mt.eom_check(conn, MT_HDRADD, "X-Dispatch-Test", want) then
	fail(string.format("X-Dispatch-Test: expected %q, got %q", want,
	     tostring(mt.getheader(conn, "X-Dispatch-Test", 0))))
end
-- The copy of the accepted destination.
if not mt.eom_check(conn, MT_RCPTADD, "<archive@example.org>") then
	fail("no recipient <archive@example.org> added")
end
-- And nothing that was not asked for.
if mt.eom_check(conn, MT_RCPTDELETE, "<alice@example.org>") then
	fail("recipient <alice@example.org> was deleted")
end
if mt.eom_check(conn, MT_QUARANTINE) then
	fail("the message was quarantined")
end

mt.disconnect(conn)
mt.echo("basic.lua: all checks passed")
