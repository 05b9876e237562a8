//! Multipart bodies through the proxy, with the native rules and with CRS: an attack
//! hidden by each way two parsers could split a body differently is refused; benign
//! uploads (a PNG, a CSV, text with quotes and semicolons) reach the application.

use std::path::PathBuf;

use crate::support::*;

const ATTACK: &str = "1' UNION SELECT password FROM users--";
const CD: &str = "Content-Disposition: form-data; name=";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A deterministic PNG-like binary: the PNG signature and chunk framing around
/// pseudo-random bytes (what compressed image data looks like).
fn png() -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x10\0\0\0\x10\x08\x06\0\0\0\x1f\xf3\xffa\0\0\x10\0IDAT".to_vec();
    let mut x: u32 = 0x2545_f491;
    for _ in 0..4096 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.push((x >> 11) as u8);
    }
    v.extend_from_slice(b"\0\0\0\0IEND\xaeB`\x82");
    v
}

struct Case {
    what: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
    /// Expected status with the native rules, and with CRS.
    native: u16,
    crs: u16,
}

fn cases() -> Vec<Case> {
    let ct = "multipart/form-data; boundary=XyZ";
    let s = |t: String| t.into_bytes();
    let mut upload = format!(
        "--XyZ\r\n{CD}\"title\"\r\n\r\nholiday\r\n--XyZ\r\n{CD}\"photo\"; filename=\"beach.png\"\r\nContent-Type: image/png\r\n\r\n"
    )
    .into_bytes();
    upload.extend_from_slice(&png());
    upload.extend_from_slice(b"\r\n--XyZ--\r\n");
    vec![
        Case {
            what: "attack in a plain field",
            content_type: ct,
            body: s(format!("--XyZ\r\n{CD}\"q\"\r\n\r\n{ATTACK}\r\n--XyZ--\r\n")),
            native: 403,
            crs: 403,
        },
        Case {
            what: "closing boundary inside a value (mid-line)",
            content_type: ct,
            body: s(format!(
                "--XyZ\r\n{CD}\"q\"\r\n\r\nx--XyZ--\r\n{ATTACK}\r\n--XyZ--\r\n"
            )),
            native: 403,
            crs: 403,
        },
        Case {
            what: "empty filename is a field",
            content_type: ct,
            body: s(format!(
                "--XyZ\r\n{CD}\"q\"; filename=\"\"\r\n\r\n{ATTACK}\r\n--XyZ--\r\n"
            )),
            native: 403,
            crs: 403,
        },
        Case {
            what: "part after the closing boundary",
            content_type: ct,
            body: s(format!(
                "--XyZ\r\n{CD}\"a\"\r\n\r\nok\r\n--XyZ--\r\n--XyZ\r\n{CD}\"q\"\r\n\r\n{ATTACK}\r\n--XyZ--\r\n"
            )),
            native: 403,
            crs: 403,
        },
        Case {
            what: "file contents",
            content_type: ct,
            body: s(format!(
                "--XyZ\r\n{CD}\"up\"; filename=\"a.html\"\r\nContent-Type: text/html\r\n\r\n<script>alert(document.cookie)</script>\r\n--XyZ--\r\n"
            )),
            native: 403,
            // CRS reads no file contents (as ModSecurity without @inspectFile); the
            // native rules do.
            crs: 200,
        },
        Case {
            what: "LF-only lines",
            content_type: ct,
            body: s(format!("--XyZ\n{CD}\"a\"\n\nok\n--XyZ--\n")),
            native: 403,
            crs: 403,
        },
        Case {
            what: "second name in Content-Disposition",
            content_type: ct,
            body: s(format!("--XyZ\r\n{CD}\"a\"; name=\"q\"\r\n\r\nok\r\n--XyZ--\r\n")),
            native: 403,
            crs: 403,
        },
        Case {
            what: "unbalanced quotes",
            content_type: ct,
            body: s(format!("--XyZ\r\n{CD}\"a\r\n\r\nok\r\n--XyZ--\r\n")),
            native: 403,
            crs: 403,
        },
        Case {
            what: "repeated part header",
            content_type: ct,
            body: s(format!(
                "--XyZ\r\n{CD}\"a\"\r\n{CD}\"q\"\r\n\r\nok\r\n--XyZ--\r\n"
            )),
            native: 403,
            crs: 403,
        },
        Case {
            what: "data before the first boundary",
            content_type: ct,
            body: s(format!("junk\r\n--XyZ\r\n{CD}\"a\"\r\n\r\nok\r\n--XyZ--\r\n")),
            native: 403,
            crs: 403,
        },
        Case {
            what: "no closing boundary",
            content_type: ct,
            body: s(format!("--XyZ\r\n{CD}\"a\"\r\n\r\nok\r\n")),
            native: 403,
            crs: 403,
        },
        Case {
            what: "text after a boundary",
            content_type: ct,
            body: s(format!("--XyZ\r\n{CD}\"a\"\r\n\r\nok\r\n--XyZjunk\r\n--XyZ--\r\n")),
            native: 403,
            crs: 403,
        },
        Case {
            what: "two boundary parameters",
            content_type: "multipart/form-data; boundary=XyZ; boundary=Other",
            body: s(format!("--XyZ\r\n{CD}\"a\"\r\n\r\nok\r\n--XyZ--\r\n")),
            native: 403,
            crs: 403,
        },
        Case {
            what: "benign PNG upload with a title",
            content_type: ct,
            body: upload,
            native: 200,
            crs: 200,
        },
        Case {
            what: "benign CSV upload",
            content_type: ct,
            body: s(format!(
                "--XyZ\r\n{CD}\"sheet\"; filename=\"contacts.csv\"\r\nContent-Type: text/csv\r\n\r\nname;city;note\r\n\"O'Neil, Anne\";\"Cork\";\"said \"\"hi\"\"; left early\"\r\n\"Smith\";\"Leeds\";\"n/a\"\r\n--XyZ--\r\n"
            )),
            native: 200,
            crs: 200,
        },
        Case {
            what: "benign text fields with quotes and semicolons",
            content_type: ct,
            body: s(format!(
                "--XyZ\r\n{CD}\"note\"\r\n\r\nShe said \"yes\"; then left; it's fine\r\n--XyZ\r\n{CD}\"a;b\"\r\n\r\nx\r\n--XyZ--\r\n"
            )),
            native: 200,
            crs: 200,
        },
    ]
}

async fn run_table(gw: &TestGateway, crs: bool) {
    for case in cases() {
        let mut c = Sender::plain(gw.addr("http")).await;
        let req = http::Request::post("/upload")
            .header("host", "localhost")
            .header(
                "user-agent",
                "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Firefox/120.0",
            )
            .header("accept", "text/html")
            .header("content-type", case.content_type)
            .body(full(case.body.clone()))
            .unwrap();
        let r = Reply::from(c.send(req).await.unwrap()).await;
        let want = if crs { case.crs } else { case.native };
        assert_eq!(
            r.status,
            want,
            "{} ({}): {}",
            case.what,
            if crs { "CRS" } else { "native" },
            r.text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_table_through_the_native_rules() {
    let up = echo_upstream().await;
    let extra = format!(
        "\n[bans]\nenabled = false\n\n[waf]\nrules = [\"{}\"]\n",
        repo().join("rules/*.toml").display()
    );
    let gw = TestGateway::start(&base_config(&[up.url()], &extra)).await;
    run_table(&gw, false).await;
    let benign = cases().iter().filter(|c| c.native == 200).count();
    assert_eq!(up.hits(), benign);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_table_through_crs() {
    let up = echo_upstream().await;
    let extra = format!(
        "\n[bans]\nenabled = false\n\n[waf]\n[waf.crs]\npath = \"{}\"\n",
        repo().join("../shared/crs").display()
    );
    let gw = TestGateway::start(&base_config(&[up.url()], &extra)).await;
    run_table(&gw, true).await;
}
