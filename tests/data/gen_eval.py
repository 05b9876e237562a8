#!/usr/bin/env python3
"""Builds a WAF evaluation corpus for `gateway waf eval` from public material on this machine.

Attacks: the OWASP CRS regression tests (../shared/crs/tests, Apache-2.0) whose stage
expects a paranoia-level-1 attack rule (930 LFI, 931 RFI, 932 RCE, 933 PHP, 934 generic,
941 XSS, 942 SQLi, 944 Java), labelled `crs-pl1/<family>`.

Benign (labels `benign/<source>/<placement>`): real text nobody wrote for a WAF — paragraphs
of the installed manual pages (/usr/share/man, full of options, pipes, quotes and
semicolons), Debian copyright files (/usr/share/doc/*/copyright), Rust doc comments and
READMEs of the crates in ~/.cargo/registry, and crates.io index records (JSON package
metadata) as JSON bodies. Each text is placed in a query argument, a form field, a JSON
field, a multipart field and (when it fits a header) a custom header. Sampling is seeded,
so a run on the same machine gives the same corpus.

Payload lists (optional, `--payloads DIR`): every `DIR/<family>.txt` (one payload per line,
such as the Intruder lists of swisskyrepo/PayloadsAllTheThings, MIT; see
tests/data/payload-sources.md for the files used in the issue notes) becomes requests labelled
`payload/<family>/<encoding>/<placement>`: each payload in ten placements (query, path segment,
form, JSON value, multipart field, custom header, User-Agent, XML/SOAP body, GraphQL variable,
JSON body of an API) and five encodings (plain, URL-encoded once more, base64, unpadded
base64url, JavaScript \\u escapes). Header placements take only what a header can carry.

Usage: python3 tests/data/gen_eval.py OUT_DIR [--per-source N] [--payloads DIR]
Then:  gateway waf eval --config gateway.toml OUT_DIR
"""
import base64
import glob
import gzip
import json
import os
import random
import re
import sys
import urllib.parse

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
CRS = os.path.normpath(os.path.join(HERE, "../../../shared/crs"))
FAMILIES = {"930": "lfi", "931": "rfi", "932": "rce", "933": "php", "934": "generic",
            "941": "xss", "942": "sqli", "944": "java"}


def pl1_rules():
    """Rule ids tagged paranoia-level/1 in the CRS rule files."""
    ids = set()
    for f in glob.glob(os.path.join(CRS, "rules", "REQUEST-9*.conf")):
        text = open(f, encoding="utf-8", errors="replace").read()
        for rule in re.split(r"\n(?=SecRule|SecAction)", text):
            m = re.search(r"\bid:(\d+)", rule)
            if m and "paranoia-level/1" in rule:
                ids.add(int(m.group(1)))
    return ids


def crs_attacks():
    pl1 = pl1_rules()
    out = []
    for f in sorted(glob.glob(os.path.join(CRS, "tests", "REQUEST-9*", "*.yaml"))):
        rule = int(os.path.basename(f).split(".")[0])
        fam = FAMILIES.get(str(rule)[:3])
        if not fam or rule not in pl1:
            continue
        doc = yaml.safe_load(open(f, encoding="utf-8"))
        for t in doc.get("tests", []):
            for st in t.get("stages", []):
                inp = st.get("input", {})
                exp = (st.get("output", {}).get("log", {}) or {}).get("expect_ids") or []
                if rule not in exp or "encoded_request" in inp:
                    continue
                headers = {k: str(v) for k, v in (inp.get("headers") or {}).items()}
                data = inp.get("data", "")
                if isinstance(data, list):
                    data = "\r\n".join(data)
                out.append({"label": f"crs-pl1/{fam}", "method": inp.get("method", "GET"),
                            "target": inp.get("uri", "/"), "headers": headers, "body": data or "",
                            "source": f"{rule}-{t.get('test_id')}"})
    return out


def clean(s):
    s = re.sub(r"\s+", " ", s).strip()
    return s


def man_paragraphs(rng, n):
    files = sorted(glob.glob("/usr/share/man/man[158]/*.gz"))
    rng.shuffle(files)
    out = []
    for f in files:
        if len(out) >= n:
            break
        try:
            text = gzip.open(f, "rt", encoding="utf-8", errors="replace").read()
        except Exception:
            continue
        para = []
        for line in text.splitlines():
            if line.startswith((".", "'")):
                if para:
                    p = clean(" ".join(para))
                    if 40 <= len(p) <= 600:
                        out.append(p)
                    para = []
                continue
            line = re.sub(r"\\f[BIRP]|\\f\(..|\\\(..|\\&|\\e", "", line).replace("\\-", "-")
            para.append(line)
        # a few per page, not a whole page
    rng.shuffle(out)
    return out[:n]


def copyright_texts(rng, n):
    files = sorted(glob.glob("/usr/share/doc/*/copyright"))
    out = []
    for f in files:
        try:
            text = open(f, encoding="utf-8", errors="replace").read()
        except Exception:
            continue
        for para in text.split("\n\n"):
            p = clean(para)
            if 40 <= len(p) <= 600 and not p.startswith(("Files:", "License:", "Format:")):
                out.append(p)
    rng.shuffle(out)
    return out[:n]


def rust_docs(rng, n):
    out = []
    srcs = sorted(glob.glob(os.path.expanduser("~/.cargo/registry/src/*/*/")))
    for d in srcs:
        for f in sorted(glob.glob(os.path.join(d, "src", "*.rs")))[:5] + [os.path.join(d, "README.md")]:
            try:
                text = open(f, encoding="utf-8", errors="replace").read()
            except Exception:
                continue
            if f.endswith(".md"):
                for para in text.split("\n\n"):
                    p = clean(para)
                    if 40 <= len(p) <= 600 and not p.startswith(("[!", "![", "<")):
                        out.append(p)
            else:
                block = []
                for line in text.splitlines() + [""]:
                    s = line.strip()
                    if s.startswith(("///", "//!")):
                        block.append(s[3:].strip())
                    elif block:
                        p = clean(" ".join(block))
                        if 40 <= len(p) <= 600:
                            out.append(p)
                        block = []
    rng.shuffle(out)
    return out[:n]


def index_records(rng, n):
    out = []
    for f in sorted(glob.glob(os.path.expanduser("~/.cargo/registry/index/*/.cache/*/*/*"))):
        try:
            raw = open(f, "rb").read()
        except Exception:
            continue
        for m in re.finditer(rb"\{\"name\".*?\}(?=\x00|$)", raw):
            try:
                out.append(json.loads(m.group(0)))
            except Exception:
                pass
    rng.shuffle(out)
    return out[:n]


def place(label, text, where):
    q = urllib.parse.quote_plus
    h = {"Host": "shop.example.com", "User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
         "Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"}
    if where == "query":
        return {"label": f"{label}/query", "method": "GET", "target": "/search?q=" + q(text) + "&page=2", "headers": h}
    if where == "form":
        h2 = dict(h, **{"Content-Type": "application/x-www-form-urlencoded"})
        return {"label": f"{label}/form", "method": "POST", "target": "/comments", "headers": h2,
                "body": "name=Anne&comment=" + q(text)}
    if where == "json":
        h2 = dict(h, **{"Content-Type": "application/json"})
        return {"label": f"{label}/json", "method": "POST", "target": "/api/notes", "headers": h2,
                "body": json.dumps({"title": "note", "text": text, "tags": ["a", "b"]})}
    if where == "multipart":
        h2 = dict(h, **{"Content-Type": "multipart/form-data; boundary=XyZ"})
        body = f"--XyZ\r\nContent-Disposition: form-data; name=\"message\"\r\n\r\n{text}\r\n--XyZ--\r\n"
        return {"label": f"{label}/multipart", "method": "POST", "target": "/contact", "headers": h2, "body": body}
    if where == "header":
        return {"label": f"{label}/header", "method": "GET", "target": "/", "headers": dict(h, **{"X-Comment": text})}
    raise ValueError(where)


def encode(payload, how):
    if how == "plain":
        return payload
    if how == "url":
        return urllib.parse.quote(payload, safe="")
    if how == "base64":
        return base64.b64encode(payload.encode()).decode()
    if how == "base64url":
        return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
    if how == "jsunicode":
        return "".join(c if c.isalnum() else "\\u%04x" % ord(c) for c in payload)
    raise ValueError(how)


def header_safe(v):
    return v and all(32 <= ord(c) < 127 for c in v) and v == v.strip()


def payload_requests(label, value):
    """One payload value in every placement a client can put it."""
    q = urllib.parse.quote
    h = {"Host": "shop.example.com", "User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
         "Accept": "*/*"}
    out = [
        {"label": f"{label}/query", "method": "GET", "target": "/search?q=" + q(value, safe="") + "&page=1", "headers": h},
        {"label": f"{label}/path", "method": "GET", "target": "/files/" + q(value, safe="") + "/view", "headers": h},
        {"label": f"{label}/form", "method": "POST", "target": "/comments",
         "headers": dict(h, **{"Content-Type": "application/x-www-form-urlencoded"}), "body": "name=Anne&comment=" + q(value, safe="")},
        {"label": f"{label}/json", "method": "POST", "target": "/api/notes",
         "headers": dict(h, **{"Content-Type": "application/json"}), "body": json.dumps({"title": "note", "text": value})},
        {"label": f"{label}/multipart", "method": "POST", "target": "/contact",
         "headers": dict(h, **{"Content-Type": "multipart/form-data; boundary=XyZ"}),
         "body": f"--XyZ\r\nContent-Disposition: form-data; name=\"message\"\r\n\r\n{value}\r\n--XyZ--\r\n"},
        {"label": f"{label}/xml", "method": "POST", "target": "/soap",
         "headers": dict(h, **{"Content-Type": "text/xml"}),
         "body": '<?xml version="1.0"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
                 f'<GetItem><name>{value.replace("&", "&amp;").replace("<", "&lt;")}</name></GetItem></soap:Body></soap:Envelope>'},
        {"label": f"{label}/graphql", "method": "POST", "target": "/graphql",
         "headers": dict(h, **{"Content-Type": "application/json"}),
         "body": json.dumps({"query": "query Find($name: String!) { items(name: $name) { id title } }", "variables": {"name": value}})},
        {"label": f"{label}/api", "method": "PUT", "target": "/api/v2/users/17",
         "headers": dict(h, **{"Content-Type": "application/json"}), "body": json.dumps({"user": {"id": 17, "profile": {"bio": value}}})},
    ]
    if header_safe(value):
        out.append({"label": f"{label}/header", "method": "GET", "target": "/", "headers": dict(h, **{"X-Request-Note": value})})
        out.append({"label": f"{label}/user-agent", "method": "GET", "target": "/", "headers": dict(h, **{"User-Agent": value})})
    return out


def payload_corpus(directory):
    out = []
    for f in sorted(glob.glob(os.path.join(directory, "*.txt"))):
        family = os.path.splitext(os.path.basename(f))[0]
        seen = set()
        for line in open(f, encoding="utf-8", errors="replace"):
            p = line.rstrip("\n")
            if not p.strip() or p in seen:
                continue
            seen.add(p)
            for how in ["plain", "url", "base64", "base64url", "jsunicode"]:
                for r in payload_requests(f"payload/{family}/{how}", encode(p, how)):
                    r["payload"] = p  # not read by the eval; names the line in reports
                    out.append(r)
    return out


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        sys.exit(2)
    outdir = sys.argv[1]
    per = int(sys.argv[sys.argv.index("--per-source") + 1]) if "--per-source" in sys.argv else 400
    rng = random.Random(7)
    os.makedirs(outdir, exist_ok=True)
    attacks = crs_attacks()
    with open(os.path.join(outdir, "attacks.ndjson"), "w") as f:
        for a in attacks:
            f.write(json.dumps(a) + "\n")
    benign = []
    for name, texts in [("manpages", man_paragraphs(rng, per)), ("copyright", copyright_texts(rng, per)),
                        ("rust-docs", rust_docs(rng, per))]:
        for i, t in enumerate(texts):
            for where in ["query", "form", "json", "multipart"]:
                benign.append(place(f"benign/{name}", t, where))
            if all(32 <= ord(c) < 127 for c in t) and i % 2 == 0:
                benign.append(place(f"benign/{name}", t, "header"))
    h = {"Host": "registry.example.com", "Content-Type": "application/json", "User-Agent": "cargo/1.85"}
    for rec in index_records(rng, per):
        benign.append({"label": "benign/package-metadata/json", "method": "POST", "target": "/api/v1/crates/new",
                       "headers": h, "body": json.dumps(rec)})
    with open(os.path.join(outdir, "benign.ndjson"), "w") as f:
        for b in benign:
            f.write(json.dumps(b) + "\n")
    payloads = []
    if "--payloads" in sys.argv:
        payloads = payload_corpus(sys.argv[sys.argv.index("--payloads") + 1])
        with open(os.path.join(outdir, "payloads.ndjson"), "w") as f:
            for p in payloads:
                f.write(json.dumps(p) + "\n")
    print(f"{len(attacks)} attacks, {len(payloads)} payload requests, {len(benign)} benign requests in {outdir}")


if __name__ == "__main__":
    main()
