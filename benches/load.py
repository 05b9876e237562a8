#!/usr/bin/env python3
"""Loopback load comparison: gateway vs nginx vs HAProxy as TLS reverse proxies.

All three keep their usual TLS session resumption (cache and tickets), so the new-connection
scenario compares like with like whatever the load generator does with sessions.

Each proxy runs pinned to core 0 with one worker; the backend (nginx answering a fixed
200) and the load generators share core 1. For every scenario the script reads the proxy's
CPU time (utime + stime of all its processes, from /proc) before and after the run and
reports CPU per request alongside req/s and latency, with the ratio to nginx. Every
scenario is repeated (--rounds, default 3) and the median is reported.

Scenarios:
  h1-keepalive  wrk, HTTP/1.1 over TLS, 50 keep-alive connections
  h2            h2load, HTTP/2 over TLS, 50 connections x 10 streams
  new-conn      wrk with Connection: close: a full TLS handshake per request
  fixed-rate    h2load --h1, 2,000 req/s over 20 keep-alive connections (latency)
  many-clients  as h1-keepalive, each request from one of 10,000 addresses (X-Forwarded-For)

Needs (installs with apt when run as root): nginx haproxy wrk nghttp2-client.
Usage: python3 benches/load.py [--rounds 3] [--duration 10] [--only gateway,nginx]
Profiles: --perf DIR records every gateway's round-1 run with `perf record -g` (its CPU
numbers then include perf's overhead; read them with `perf report -i DIR/<proxy>-<scenario>.data`).
WAF: python3 benches/load.py --only gateway-crs,nginx-modsec --scenarios h1-keepalive
(CRS v4 from ../shared/crs at paranoia level 1 in both; libnginx-mod-http-modsecurity)
Before/after: --baseline-bin PATH (another build of the gateway, e.g. of the previous
commit) adds "gateway-baseline", the same config on that binary, to every round (and
"gateway-baseline-waf" when gateway-waf runs).
"gateway-secure" (in --only) is the gateway with 10,000 IP rules and a three-window rate
limit on, to measure what those phases cost against plain "gateway" in the same run.
"gateway-cluster" is gateway-secure with `[cluster]` on a redis-server the script starts
(pinned with the backend), its rate limit counted in Redis: `--only gateway-secure,
gateway-cluster --scenarios h1-keepalive,fixed-rate` measures what sharing costs.
"gateway-waf" is the gateway with the shipped native WAF rules (rules/*.toml, blocking) on,
against plain "gateway": `--only gateway,gateway-waf --scenarios get-args,json-post`.
Scenarios get-args (HTTP/1.1 GET with five query arguments) and json-post (a 2 KiB JSON
POST) are wrk runs over TLS keep-alive like h1-keepalive, with the request shapes the
WAF's cost depends on; get-args-varied and json-post-varied send the same shapes with a new
search term, page and JSON text in every request (random words), as real traffic does.
Scenarios form-64k (a 64 KiB urlencoded form: 40 fields and a long text) and upload-1m (a
multipart upload of a 1 MiB file) are the large bodies CRS reads (gateway-crs inspects up to
2 MiB, as ModSecurity's SecRequestBodyLimit does here): `--only nginx,gateway-crs,nginx-modsec
--scenarios get-args,form-64k,upload-1m`.
All traffic stays on 127.0.0.1.
"""

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")
BACKEND_PORT = 18080
PORTS = {"gateway": 19443, "nginx": 19444, "haproxy": 19445, "gateway-secure": 19446,
         "gateway-crs": 19447, "nginx-modsec": 19448, "gateway-baseline": 19449,
         "gateway-waf": 19450, "gateway-baseline-waf": 19451, "gateway-cluster": 19452}
REDIS_PORT = 19460
# OWASP CRS v4 for the WAF comparison (`--only gateway-crs,nginx-modsec`): the gateway's
# compiled CRS against nginx + libmodsecurity3 (Debian) running the same files.
CRS_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "crs"))


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, check=True, text=True, capture_output=True, **kw).stdout


def ensure_tools():
    need = [t for t in ("nginx", "haproxy", "wrk", "h2load") if not shutil.which(t)]
    if need:
        if os.geteuid() != 0:
            sys.exit(f"missing tools {need}: apt-get install nginx haproxy wrk nghttp2-client")
        sh("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
           "--no-install-recommends nginx haproxy wrk nghttp2-client")
    if not os.path.exists("/usr/lib/nginx/modules/ngx_http_modsecurity_module.so") and os.geteuid() == 0:
        sh("DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "
           "libnginx-mod-http-modsecurity")


def proc_tree(pid):
    pids = {pid}
    changed = True
    while changed:
        changed = False
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid in pids and int(d) not in pids:
                pids.add(int(d))
                changed = True
    return pids


def cpu_seconds(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / TICK


def peak_rss_kib(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def wait_port(port, timeout=15):
    import socket
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} never opened")


def write_crs_configs(d, cert, key):
    """nginx + ModSecurity and the gateway, both with CRS at paranoia level 1, blocking."""
    with open(f"{d}/modsec.conf", "w") as f:
        f.write(f"""SecRuleEngine On
SecRequestBodyAccess On
SecRequestBodyLimit 13107200
SecRequestBodyNoFilesLimit 131072
SecResponseBodyAccess Off
SecAuditEngine Off
SecDebugLogLevel 0
SecRule REQUEST_HEADERS:Content-Type "^(?:application(?:/soap\\+|/)|text/)xml" "id:200000,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=XML"
SecRule REQUEST_HEADERS:Content-Type "^application/json" "id:200001,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=JSON"
Include {CRS_DIR}/crs-setup.conf.example
Include {CRS_DIR}/rules/*.conf
""")
    with open(f"{d}/nginx.conf") as f:
        conf = f.read()
    conf = ("load_module /usr/lib/nginx/modules/ngx_http_modsecurity_module.so;\n"
            + conf.replace("pid " + d + "/nginx.pid", "pid " + d + "/nginx-modsec.pid")
            .replace(f"127.0.0.1:{PORTS['nginx']}", f"127.0.0.1:{PORTS['nginx-modsec']}")
            .replace("http {", f"http {{\n  modsecurity on;\n  modsecurity_rules_file {d}/modsec.conf;", 1))
    with open(f"{d}/nginx-modsec.conf", "w") as f:
        f.write(conf)
    with open(f"{d}/gateway.toml") as f:
        base = f.read()
    with open(f"{d}/gateway-crs.toml", "w") as f:
        f.write(base.replace(f"127.0.0.1:{PORTS['gateway']}", f"127.0.0.1:{PORTS['gateway-crs']}")
                + f'\n[waf]\nbody_limit = 2097152\n[waf.crs]\npath = "{CRS_DIR}"\nparanoia_level = 1\n')


def write_configs(d, cert, key):
    with open(cert) as c, open(key) as k:
        pem = c.read() + k.read()
    with open(f"{d}/combined.pem", "w") as f:
        f.write(pem)
    common_nginx = f"""
worker_rlimit_nofile 16384;
error_log {d}/nginx-error.log warn;
pid {d}/%s.pid;
events {{ worker_connections 16384; }}
"""
    with open(f"{d}/backend.conf", "w") as f:
        f.write(common_nginx % "backend" + f"""
worker_processes 1;
http {{
  access_log off;
  keepalive_requests 1000000;
  client_max_body_size 8m;
  server {{
    listen 127.0.0.1:{BACKEND_PORT} reuseport backlog=4096;
    location / {{ return 200 "hello from the backend\\n"; }}
  }}
}}
""")
    with open(f"{d}/nginx.conf", "w") as f:
        f.write(common_nginx % "nginx" + f"""
worker_processes 1;
http {{
  access_log off;
  keepalive_requests 1000000;
  client_max_body_size 8m;
  upstream backend {{ server 127.0.0.1:{BACKEND_PORT}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{PORTS['nginx']} ssl http2 backlog=4096;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    ssl_session_tickets on;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto https;
    }}
  }}
}}
""")
    with open(f"{d}/haproxy.cfg", "w") as f:
        f.write(f"""
global
  nbthread 1
  maxconn 9000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  bind 127.0.0.1:{PORTS['haproxy']} ssl crt {d}/combined.pem alpn h2,http/1.1
  option forwardfor
  default_backend be
backend be
  server s1 127.0.0.1:{BACKEND_PORT}
""")
    with open(f"{d}/gateway.toml", "w") as f:
        f.write(f"""
[server]
worker_threads = 1
access_log = false
data_dir = "{d}/data"
[admin]
enabled = false
[tls]
[[tls.certificates]]
cert = "{cert}"
key = "{key}"
server_names = ["localhost"]
[[listeners]]
name = "https"
bind = "127.0.0.1:{PORTS['gateway']}"
tls = true
max_connections = 20000
max_connections_per_ip = 0
[[upstreams]]
name = "backend"
servers = ["http://127.0.0.1:{BACKEND_PORT}"]
[[routes]]
name = "all"
upstream = "backend"
""")
    # The same gateway with the IP-rule and rate-limit phases on: 10,000 deny rules that do
    # not match loopback, and a three-window per-IP policy too generous to refuse anything.
    with open(f"{d}/gateway.toml") as f:
        base = f.read()
    rules = "".join(
        f'[[ip_rules.rules]]\nname = "r{i}"\naction = "deny"\ncidr = "{10 + i // 65536 % 200}.{i // 256 % 256}.{i % 256}.0/24"\n'
        for i in range(10000))
    with open(f"{d}/gateway-waf.toml", "w") as f:
        f.write(base.replace(f"127.0.0.1:{PORTS['gateway']}", f"127.0.0.1:{PORTS['gateway-waf']}")
                + f'\n[waf]\nrules = ["{ROOT}/rules/*.toml"]\nmode = "block"\n')
    with open(f"{d}/gateway-secure.toml", "w") as f:
        # The load generator stands in for a load balancer: its X-Forwarded-For is believed
        # (the many-clients scenario spreads requests over 10,000 client addresses).
        f.write(base.replace(f"127.0.0.1:{PORTS['gateway']}", f"127.0.0.1:{PORTS['gateway-secure']}")
                .replace("[server]\n", '[server]\ntrusted_proxies = ["127.0.0.1/32"]\n', 1)
                + '\n[[rate_limits]]\nname = "per-ip"\nlimits = [{ requests = 1000000000, per = "1m" }, '
                  '{ requests = 1000000000, per = "1h" }, { requests = 1000000000, per = "1d" }]\n'
                + rules)
    with open(f"{d}/gateway-secure.toml") as f:
        secure = f.read()
    with open(f"{d}/gateway-cluster.toml", "w") as f:
        f.write(secure.replace(f"127.0.0.1:{PORTS['gateway-secure']}", f"127.0.0.1:{PORTS['gateway-cluster']}")
                .replace(f'data_dir = "{d}/data"', f'data_dir = "{d}/data-cluster"')
                + f'\n[cluster]\nbackend = "redis"\nurl = "redis://127.0.0.1:{REDIS_PORT}"\ninstance = "bench"\n')


def start(name, d, gateway_bin, baseline_bin=None):
    pin = ["taskset", "-c", "0"]
    if name.startswith("gateway-baseline"):
        cmd = pin + [baseline_bin, "run", "--config", f"{d}/{name}.toml"]
    elif name.startswith("gateway"):
        cmd = pin + [gateway_bin, "run", "--config", f"{d}/{name}.toml"]
    elif name in ("nginx", "nginx-modsec"):
        cmd = pin + ["nginx", "-c", f"{d}/{name}.conf", "-g", "daemon off;"]
    else:
        cmd = pin + ["haproxy", "-db", "-f", f"{d}/haproxy.cfg"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_port(PORTS[name])
    time.sleep(0.3)
    return p


def stop(p):
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=10)
    except Exception:
        os.killpg(p.pid, signal.SIGKILL)


def parse_wrk(out):
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    def lat(p):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        if not m:
            return None
        v, u = float(m.group(1)), m.group(2)
        return v / 1000 if u == "us" else v if u == "ms" else v * 1000
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_err = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errs = int(errors.group(1)) if errors else 0
    if socket_err:
        errs += int(socket_err.group(1)) + int(socket_err.group(4))
    return {"requests": reqs, "rps": rps, "p50_ms": lat(50), "p99_ms": lat(99), "errors": errs}


def parse_h2load(out):
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    done, ok, failed = int(m.group(3)), int(m.group(4)), int(m.group(5))
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    t = re.search(r"time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)", out)
    def ms(v, u):
        v = float(v)
        return v / 1000 if u == "us" else v if u == "ms" else v * 1000
    return {"requests": ok, "rps": rps, "mean_ms": ms(t.group(5), t.group(6)),
            "max_ms": ms(t.group(3), t.group(4)), "errors": failed + (done - ok)}


# The varied scenarios' words (benches/waf.rs's `WORDS`): every request gets its own search
# term, page and JSON text, so the WAF's memo of clean values (src/waf/memo.rs) helps only
# where real traffic repeats too (headers, names, common values).
WORDS = ("blue running shoes trail red jacket rain winter kids size wool socks leather boots "
         "black white summer dress linen shirt slim fit jeans waterproof hiking lightweight "
         "men's women's sale new green cotton hat scarf gloves warm soft sport bag small large "
         "leave door ring please side gift wrap").split()

VARIED_LUA = """
local words = {%s}
local function w(k, sep)
  local t = {}
  for i = 1, k do t[i] = words[math.random(#words)] end
  return table.concat(t, sep)
end
request = function()
  if MODE == "get" then
    return wrk.format("GET", "/api/v1/orders?page=" .. math.random(1, 400) ..
      "&sort=-created_at&status=shipped&q=" .. w(3, "+") .. "&lang=en-GB")
  end
  local items = {}
  for i = 1, 14 do
    items[i] = '{"sku":"SKU-' .. string.format("%%05d", math.random(0, 99999)) .. '","name":"' ..
      w(3, " ") .. '","qty":' .. math.random(1, 3) .. ',"note":"' .. w(4, " ") .. ", " ..
      w(3, " ") .. " (" .. w(2, " ") .. "): " .. w(3, " ") .. '."}'
  end
  local body = '{"customer":{"name":"' .. w(2, " ") .. '"},"items":[' .. table.concat(items, ",") .. "]}"
  return wrk.format("POST", "/api/v1/orders", {["Content-Type"] = "application/json"}, body)
end
""" % ", ".join('"%s"' % x for x in WORDS)


PROSE = ("The trail was wet after the rain, so we took the long way round (past the old mill & "
         "the bridge) -- it's 12.5 km, about 3 hours; bring water, a hat and 2 snacks per person! "
         "Questions? Ask at the desk: 9-17 h, Mon.-Sat. ")
BOUNDARY = "----gatewaybench7MA4YWxkTrZu0gW"


def form_64k_body():
    """40 short fields and a long text: a CMS article (benches/crs.rs's form_64k)."""
    from urllib.parse import quote_plus
    body = "".join(f"field_{i}=value+number+{i}&" for i in range(40))
    body += "title=Weekend+walks&tags=outdoor%2Cfamily%2Cspring&content="
    chunk = quote_plus(PROSE, safe="-._")
    while len(body) + len(chunk) <= 64 * 1024:
        body += chunk
    return "application/x-www-form-urlencoded", body.encode()


def upload_1m_body():
    """Three fields and a 1 MiB file of random bytes (benches/crs.rs's multipart_1m)."""
    import random
    rnd = random.Random(7)
    parts = b""
    for n, v in (("album", "Holiday 2024"), ("caption", "Sunset at the beach, day 3"), ("public", "1")):
        parts += f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{n}"\r\n\r\n{v}\r\n'.encode()
    parts += (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="photo"; filename="beach.jpg"\r\n'
              f"Content-Type: image/jpeg\r\n\r\n").encode()
    parts += rnd.randbytes(1 << 20) + f"\r\n--{BOUNDARY}--\r\n".encode()
    return f"multipart/form-data; boundary={BOUNDARY}", parts


def scenario(name, port, duration):
    url = f"https://127.0.0.1:{port}/"
    load = ["taskset", "-c", "1"]
    if name in ("get-args-varied", "json-post-varied"):
        script = tempfile.mktemp(prefix="wrk-", suffix=".lua")
        with open(script, "w") as f:
            f.write('MODE = "%s"\n' % ("get" if name == "get-args-varied" else "post") + VARIED_LUA)
        out = sh(" ".join(load + ["wrk", "--latency", "-t1", "-c50", f"-d{duration}s", "-s", script, url]))
        os.unlink(script)
        return parse_wrk(out)
    if name in ("get-args", "json-post"):
        script = tempfile.mktemp(prefix="wrk-", suffix=".lua")
        if name == "get-args":
            lua = ('wrk.path = "/api/v1/orders?page=2&sort=-created_at&status=shipped'
                   '&q=blue+running+shoes&lang=en-GB"\n')
        else:
            items = ",".join(
                '{"sku":"SKU-%05d","name":"Trail runner, size 42 (blue/grey)","qty":%d,'
                '"note":"Leave at the door (side entrance), don\'t ring: baby sleeping."}' % (i, i % 3 + 1)
                for i in range(14))
            body = '{"customer":{"name":"Anne-Marie O\'Neil"},"items":[' + items + ']}'
            lua = ('wrk.method = "POST"\nwrk.path = "/api/v1/orders"\n'
                   'wrk.headers["Content-Type"] = "application/json"\n'
                   f'wrk.body = [==[{body}]==]\n')
        with open(script, "w") as f:
            f.write(lua)
        out = sh(" ".join(load + ["wrk", "--latency", "-t1", "-c50", f"-d{duration}s", "-s", script, url]))
        os.unlink(script)
        return parse_wrk(out)
    if name in ("form-64k", "upload-1m"):
        # A 64 KiB form POST and a 1 MiB multipart upload (the shapes of benches/crs.rs's
        # form_64k and multipart_1m), read by wrk from a file.
        body_file = tempfile.mktemp(prefix="wrk-body-")
        ctype, body = form_64k_body() if name == "form-64k" else upload_1m_body()
        with open(body_file, "wb") as f:
            f.write(body)
        script = tempfile.mktemp(prefix="wrk-", suffix=".lua")
        with open(script, "w") as f:
            f.write(f'local f = io.open("{body_file}", "rb")\nwrk.body = f:read("*a")\nf:close()\n'
                    f'wrk.method = "POST"\nwrk.path = "/api/v1/upload"\n'
                    f'wrk.headers["Content-Type"] = "{ctype}"\n')
        out = sh(" ".join(load + ["wrk", "--latency", "-t1", "-c20", f"-d{duration}s", "-s", script, url]))
        os.unlink(script)
        os.unlink(body_file)
        return parse_wrk(out)
    if name == "h1-keepalive":
        out = sh(" ".join(load + ["wrk", "--latency", "-t1", "-c50", f"-d{duration}s", url]))
        return parse_wrk(out)
    if name == "many-clients":
        # As h1-keepalive, each request from one of 10,000 client addresses (X-Forwarded-For,
        # outside the 10.0.0.0/8 deny rules): per-client state (rate-limit buckets, shared
        # reservations in a cluster) is touched cold instead of one hot key.
        script = tempfile.mktemp(prefix="wrk-", suffix=".lua")
        with open(script, "w") as f:
            f.write('request = function()\n'
                    '  local i = math.random(0, 9999)\n'
                    '  return wrk.format(nil, nil, {["X-Forwarded-For"] = "172.16." .. math.floor(i / 256) .. "." .. (i % 256)})\n'
                    'end\n')
        out = sh(" ".join(load + ["wrk", "--latency", "-t1", "-c50", f"-d{duration}s", "-s", script, url]))
        os.unlink(script)
        return parse_wrk(out)
    if name == "new-conn":
        out = sh(" ".join(load + ["wrk", "--latency", "-t1", "-c20", f"-d{duration}s",
                                   "-H", "'Connection: close'", url]))
        return parse_wrk(out)
    if name == "h2":
        out = sh(" ".join(load + ["h2load", "-c50", "-m10", f"-D{duration}", "-t1", url]))
        return parse_h2load(out)
    if name == "fixed-rate":
        log = tempfile.mktemp(prefix="h2load-")
        out = sh(" ".join(load + ["h2load", "--h1", "-c20", "--rps", "100", f"-D{duration}", "-t1",
                                   f"--log-file={log}", url]))
        r = parse_h2load(out)
        # Per-request log: start (us), status, duration (us).
        with open(log) as f:
            durs = sorted(int(line.split()[2]) / 1000 for line in f if line.strip())
        os.unlink(log)
        if durs:
            r["p50_ms"] = durs[len(durs) // 2]
            r["p99_ms"] = durs[min(len(durs) - 1, int(len(durs) * 0.99))]
        return r
    raise ValueError(name)


def dev_cert(d, gateway_bin):
    """A localhost certificate from the gateway's own dev-cert generator (a throwaway start)."""
    cert, key = f"{d}/certs/localhost.crt", f"{d}/certs/localhost.key"
    os.makedirs(f"{d}/certs")
    with open(f"{d}/gen.toml", "w") as f:
        f.write(f"""[admin]\nenabled = false\n[tls]\ndev_self_signed = true\n[[tls.certificates]]\ncert = "{cert}"\nkey = "{key}"\n
[[listeners]]\nname = "x"\nbind = "127.0.0.1:0"\ntls = true\n[[upstreams]]\nname = "u"\nservers = ["builtin:echo"]\n[[routes]]\nname = "r"\nupstream = "u"\n""")
    g = subprocess.Popen([gateway_bin, "run", "--config", f"{d}/gen.toml"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if os.path.exists(key):
            break
        time.sleep(0.1)
    time.sleep(0.3)
    g.terminate(); g.wait()
    return cert, key


def start_backend(d):
    """The backend (nginx answering a fixed 200), pinned to core 1."""
    p = subprocess.Popen(["taskset", "-c", "1", "nginx", "-c", f"{d}/backend.conf", "-g", "daemon off;"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_port(BACKEND_PORT)
    return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--only", default="gateway,nginx,haproxy")
    ap.add_argument("--scenarios", default="h1-keepalive,h2,new-conn,fixed-rate")
    ap.add_argument("--baseline-bin", default=None,
                    help="another gateway build, run as gateway-baseline beside the current one")
    ap.add_argument("--perf", default=None, metavar="DIR",
                    help="record each gateway's profile in round 1 (perf record -g) to DIR/<proxy>-<scenario>.data")
    ap.add_argument("--baseline-rules", default=None,
                    help="the rules/ directory gateway-baseline-waf loads (default: this checkout's)")
    args = ap.parse_args()
    ensure_tools()
    print("building the gateway (release)...", flush=True)
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "gateway"], cwd=ROOT, check=True)
    gateway_bin = os.path.join(ROOT, "target/release/gateway")
    d = tempfile.mkdtemp(prefix="gateway-load-")
    sys.path.insert(0, ROOT)
    cert, key = dev_cert(d, gateway_bin)
    write_configs(d, cert, key)
    if args.baseline_bin:
        args.only += ",gateway-baseline"
        if "gateway-waf" in args.only:
            args.only += ",gateway-baseline-waf"
            with open(f"{d}/gateway-waf.toml") as f:
                waf = f.read()
            with open(f"{d}/gateway-baseline-waf.toml", "w") as f:
                f.write(waf.replace(f"127.0.0.1:{PORTS['gateway-waf']}", f"127.0.0.1:{PORTS['gateway-baseline-waf']}")
                        .replace(f'data_dir = "{d}/data"', f'data_dir = "{d}/data-baseline-waf"')
                        .replace(f"{ROOT}/rules/", f"{args.baseline_rules or ROOT + '/rules'}/"))
        with open(f"{d}/gateway.toml") as f:
            base = f.read()
        with open(f"{d}/gateway-baseline.toml", "w") as f:
            f.write(base.replace(f"127.0.0.1:{PORTS['gateway']}", f"127.0.0.1:{PORTS['gateway-baseline']}")
                    .replace(f'data_dir = "{d}/data"', f'data_dir = "{d}/data-baseline"'))
    if any(p in args.only for p in ("gateway-crs", "nginx-modsec")):
        write_crs_configs(d, cert, key)

    backend = start_backend(d)
    redis = None
    if "gateway-cluster" in args.only:
        redis = subprocess.Popen(["taskset", "-c", "1", "redis-server", "--port", str(REDIS_PORT),
                                  "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_port(REDIS_PORT)
    proxies = args.only.split(",")
    scenarios = args.scenarios.split(",")
    results = {}  # (scenario, proxy) -> list of dicts
    try:
        for rnd in range(args.rounds):
            for proxy in proxies:
                p = start(proxy, d, gateway_bin, args.baseline_bin)
                pids = proc_tree(p.pid)
                for sc in scenarios:
                    before = cpu_seconds(pids)
                    rec = None
                    if args.perf and rnd == 0 and proxy.startswith("gateway"):
                        os.makedirs(args.perf, exist_ok=True)
                        rec = subprocess.Popen(["perf", "record", "-q", "-g", "-p", str(p.pid), "-o",
                                                f"{args.perf}/{proxy}-{sc}.data"],
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    r = scenario(sc, PORTS[proxy], args.duration)
                    if rec:
                        rec.send_signal(signal.SIGINT)
                        rec.wait()
                    r["cpu_us_per_req"] = (cpu_seconds(pids) - before) * 1e6 / max(r["requests"], 1)
                    results.setdefault((sc, proxy), []).append(r)
                    print(f"round {rnd + 1} {sc:13} {proxy:8} {fmt(r)}", flush=True)
                rss = peak_rss_kib(proc_tree(p.pid))
                results.setdefault(("peak-rss", proxy), []).append({"rss_kib": rss})
                stop(p)
    finally:
        stop(backend)
        if redis:
            stop(redis)
    print("\nmedians of", args.rounds, "rounds (proxy pinned to one core; CPU = proxy utime+stime)")
    for sc in scenarios:
        base = med(results.get((sc, "nginx"), []), "cpu_us_per_req")
        for proxy in proxies:
            rs = results[(sc, proxy)]
            m = {k: med(rs, k) for k in rs[0] if rs[0][k] is not None}
            ratio = f"  {m['cpu_us_per_req'] / base:.2f}x nginx CPU" if base else ""
            plain = med(results.get((sc, "gateway"), []), "cpu_us_per_req")
            baseline = med(results.get((sc, "gateway-baseline"), []), "cpu_us_per_req")
            if proxy == "gateway" and baseline:
                ratio += f"  {m['cpu_us_per_req'] / baseline:.3f}x baseline CPU"
            if proxy in ("gateway-secure", "gateway-waf") and plain:
                ratio += f"  {m['cpu_us_per_req'] / plain:.2f}x gateway CPU"
            secure = med(results.get((sc, "gateway-secure"), []), "cpu_us_per_req")
            if proxy == "gateway-cluster" and secure:
                ratio += f"  {m['cpu_us_per_req'] / secure:.2f}x gateway-secure CPU"
            if proxy == "gateway-baseline-waf" and baseline:
                ratio += f"  {m['cpu_us_per_req'] / baseline:.2f}x gateway-baseline CPU"
            modsec = med(results.get((sc, "nginx-modsec"), []), "cpu_us_per_req")
            if proxy == "gateway-crs" and modsec:
                ratio += f"  1/{modsec / m['cpu_us_per_req']:.1f} of nginx+ModSecurity CPU"
            print(f"{sc:13} {proxy:8} {fmt(m)}{ratio}")
    base = med(results.get(("peak-rss", "nginx"), []), "rss_kib")
    for proxy in proxies:
        r = med(results[("peak-rss", proxy)], "rss_kib")
        ratio = f"  {r / base:.2f}x nginx" if base else ""
        print(f"peak-rss      {proxy:8} {r / 1024:.1f} MiB{ratio}")


def med(rs, key):
    vals = [r[key] for r in rs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def fmt(r):
    parts = [f"{r['rps']:9.0f} req/s", f"cpu {r['cpu_us_per_req']:7.1f} us/req"]
    for k in ("p50_ms", "p99_ms", "mean_ms", "max_ms"):
        if r.get(k) is not None:
            parts.append(f"{k[:-3]} {r[k]:.2f} ms")
    parts.append(f"errors {int(r['errors'])}")
    return "  ".join(parts)


if __name__ == "__main__":
    main()
