# Cross-check of DMARC record parsing and policy discovery against
# checkdmarc 6.0.4 (PyPI, RFC 9989 aware), with the zone data of
# tests/it/dmarc_rfc9989.rs served from a dict instead of DNS.
#
#   python3 -m venv /tmp/cdm && /tmp/cdm/bin/pip install checkdmarc==6.0.4
#   /tmp/cdm/bin/python checkdmarc_crosscheck.py crosscheck_cases.json
#
# Each discovery case carries "ours": what the conformance tests assert.
# Run by hand (not by cargo test: checkdmarc is not a Debian package).
import json, sys
import dns.resolver
import checkdmarc.dmarc as cd
import checkdmarc.utils as cu

ZONE = {}
def fake_query_dns(domain, record_type, **kw):
    name = domain.rstrip('.').lower()
    if record_type != "TXT":
        raise dns.resolver.NoAnswer()
    if name in ZONE:
        return list(ZONE[name])
    # every name under .test exists as an empty non-terminal or not at all
    # author domains exist (checkdmarc refuses to walk for one that does
    # not); _dmarc names without a record do not.
    if not name.startswith("_dmarc.") or any(k.endswith("." + name) for k in ZONE):
        raise dns.resolver.NoAnswer()
    raise dns.resolver.NXDOMAIN()
cd.query_dns = fake_query_dns
cu.query_dns = fake_query_dns

def parse(record, domain="x.test"):
    try:
        r = cd.parse_dmarc_record(record, domain)
        t = r["tags"]
        g = lambda k: t.get(k, {}).get("value")
        return {"valid": True, "p": g("p"), "sp": g("sp"), "np": g("np"), "adkim": g("adkim"),
                "aspf": g("aspf"), "psd": g("psd"), "t": g("t"), "warnings": len(r.get("warnings", []))}
    except Exception as e:
        return {"valid": False, "error": type(e).__name__ + ": " + str(e)[:90]}

def discover(author, zone):
    ZONE.clear()
    for k, v in zone.items():
        ZONE[k] = v
    try:
        r = cd.query_dmarc_record(author, ignore_unrelated_records=True)
        return {"location": r["location"], "record": r["record"]}
    except Exception as e:
        return {"error": type(e).__name__ + ": " + str(e)[:90]}

cases = json.load(open(sys.argv[1]))
out = {"records": [[rec, parse(rec)] for rec in cases["records"]],
       "discovery": [[c["author"], c["ours"], discover(c["author"], c["zone"])] for c in cases["discovery"]]}
print(json.dumps(out, indent=1))
