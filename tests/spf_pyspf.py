#!/usr/bin/python3
"""Answers SPF questions with pyspf (Debian's python3-spf), for the
cross-check in tests/it/spf_rfc7208.rs.

Reads one JSON object a line on stdin: {"port", "ip", "sender", "helo",
"receiver"}; "sender" empty checks the HELO identity. Writes one JSON
object a line on stdout: {"result", "exp"}. Every DNS query goes to the
test's loopback DNS server at 127.0.0.1:port, nowhere else.

Run with Debian's /usr/bin/python3 (the one that has python3-spf).
"""
import json
import sys

import dns.resolver
import spf

QUERY_TIMEOUT = 1.0


def lookup(name, qtype, strict=True, timeout=None):
    # pyspf passes its own (20 s) timeout; the loopback server answers at
    # once or, where a case says so, never.
    return spf.DNSLookup_dnspython(name, qtype, timeout=QUERY_TIMEOUT)


spf.DNSLookup = lookup

for line in sys.stdin:
    q = json.loads(line)
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = q["port"]
    resolver.timeout = QUERY_TIMEOUT
    resolver.lifetime = QUERY_TIMEOUT
    dns.resolver.default_resolver = resolver
    try:
        result, exp = spf.check2(
            i=q["ip"], s=q["sender"], h=q["helo"], receiver=q["receiver"]
        )
    except Exception as e:  # a crash of pyspf is an answer too
        result, exp = "crash", repr(e)
    if result == "fail" and exp == spf.EXPLANATIONS["fail"]:
        exp = ""  # pyspf's default text, not an exp= explanation
    print(json.dumps({"result": result, "exp": exp}), flush=True)
