//! `--web-config FILE`: the real agent serving over TLS (certificates made here with the
//! `openssl` CLI) and behind basic auth, driven by the real `curl`: scrapes with the CA, plain
//! HTTP refused, right/wrong/missing passwords, required client certificates, a TLS 1.3
//! floor against a TLS 1.2 client, SIGHUP reloading the file, and bad files refused at start.

use std::{
    fs,
    io::Read,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use procmon_tests::{
    procmon_bin, require_root, require_tool, run_with_timeout, wait_for, Metrics, TempDir,
};

const TIMEOUT: Duration = Duration::from_secs(30);

fn tools(test: &str) -> bool {
    require_tool(test, "openssl", "it makes the test's certificates")
        && require_tool(test, "curl", "it is the TLS client")
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = run_with_timeout(Command::new("openssl").args(args).current_dir(dir), TIMEOUT);
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, named `{name}-ca.crt`/`.key`, in `dir`.
fn make_ca(dir: &Path, name: &str) {
    let (crt, key) = (format!("{name}-ca.crt"), format!("{name}-ca.key"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name} test CA"),
            "-keyout",
            &key,
            "-out",
            &crt,
        ],
    );
}

/// A certificate `{name}.crt`/`.key` signed by CA `ca`, with `ext` (an X.509 v3 extension
/// line: webpki refuses v1 certificates).
fn make_cert(dir: &Path, ca: &str, name: &str, ext: &str) {
    let (crt, key, csr) = (
        format!("{name}.crt"),
        format!("{name}.key"),
        format!("{name}.csr"),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &key,
            "-out",
            &csr,
        ],
    );
    let ext_file = format!("{name}.ext");
    fs::write(dir.join(&ext_file), format!("{ext}\n")).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}-ca.crt"),
            "-CAkey",
            &format!("{ca}-ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext_file,
            "-out",
            &crt,
        ],
    );
}

/// The server certificate (for 127.0.0.1, signed by CA `test`) and a client certificate
/// from the same CA.
fn certificates(dir: &Path) {
    make_ca(dir, "test");
    make_cert(
        dir,
        "test",
        "server",
        "subjectAltName=IP:127.0.0.1,DNS:localhost",
    );
    make_cert(dir, "test", "client", "extendedKeyUsage=clientAuth");
}

fn bcrypt(password: &str) -> String {
    bcrypt::hash(password, 4).unwrap()
}

/// A running `procmon agent --web-config FILE`, SIGTERMed (then killed) on drop.
struct TlsAgent {
    child: Child,
    addr: SocketAddr,
    stderr: PathBuf,
}

impl TlsAgent {
    fn start(dir: &Path, web_config: &Path) -> TlsAgent {
        let stderr = dir.join("agent.stderr");
        let child = Command::new(procmon_bin())
            .args(["agent", "--listen", "127.0.0.1:0", "--profile-hz", "0"])
            .arg("--web-config")
            .arg(web_config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut agent = TlsAgent {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            stderr,
        };
        agent.addr = wait_for(TIMEOUT, || {
            if let Some(status) = agent.child.try_wait().unwrap() {
                panic!("agent exited with {status}: {}", agent.stderr());
            }
            let text = agent.stderr();
            let at = text.find("listening on https://")?;
            let rest = &text[at + "listening on https://".len()..];
            rest.lines().next()?.trim().parse().ok()
        })
        .unwrap_or_else(|| panic!("no `listening on https://` line: {}", agent.stderr()));
        agent
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill takes no pointers; the agent is our unreaped child, so its pid cannot
        // have been reused.
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }
}

impl Drop for TlsAgent {
    fn drop(&mut self) {
        self.signal(libc::SIGTERM);
        if wait_for(TIMEOUT, || self.child.try_wait().unwrap()).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- agent stderr ---\n{}--- end ---", self.stderr());
        }
    }
}

/// What curl got: its exit status (0 for any HTTP answer), the HTTP status (0 for none),
/// the response headers and the body.
struct Curl {
    exit: i32,
    status: u16,
    headers: String,
    body: String,
    stderr: String,
}

fn curl(dir: &Path, args: &[&str]) -> Curl {
    let (headers, body) = (dir.join("curl.headers"), dir.join("curl.body"));
    let _ = fs::remove_file(&headers);
    let _ = fs::remove_file(&body);
    let out = run_with_timeout(
        Command::new("curl")
            .args(["-sS", "--max-time", "20", "-w", "%{http_code}", "-D"])
            .arg(&headers)
            .arg("-o")
            .arg(&body)
            .args(args)
            .current_dir(dir),
        TIMEOUT,
    );
    Curl {
        exit: out.status.code().unwrap_or(-1),
        status: String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0),
        headers: fs::read_to_string(&headers).unwrap_or_default(),
        body: fs::read_to_string(&body).unwrap_or_default(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn expect_status(c: &Curl, status: u16, what: &str) {
    assert_eq!(
        (c.exit, c.status),
        (0, status),
        "{what}: curl exit {}, HTTP {}; curl: {}",
        c.exit,
        c.status,
        c.stderr
    );
}

/// curl got no HTTP answer at all (the TLS layer refused it).
fn expect_refused(c: &Curl, what: &str) {
    assert!(
        c.exit != 0 && c.status == 0,
        "{what}: expected the connection refused, got curl exit {}, HTTP {}: {}",
        c.exit,
        c.status,
        c.body
    );
}

#[test]
fn https_with_basic_auth() {
    let test = "web_config::https_with_basic_auth";
    if !require_root(test) || !tools(test) {
        return;
    }
    let dir = TempDir::new("web-config-auth");
    let d = dir.path();
    certificates(d);
    let config = d.join("web.yml");
    fs::write(
        &config,
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
             basic_auth_users:\n  prometheus: '{}'\n",
            bcrypt("scrape:me")
        ),
    )
    .unwrap();
    let agent = TlsAgent::start(d, &config);
    let ca = ["--cacert", "test-ca.crt"];
    let right = ["-u", "prometheus:scrape:me"];

    let ok = curl(d, &[&ca[..], &right, &[&agent.url("/metrics")]].concat());
    expect_status(&ok, 200, "https /metrics with the right password");
    assert!(
        ok.body.contains("procmon_process_starts_total"),
        "{}",
        ok.body
    );
    // Again: the remembered check answers the same.
    expect_status(
        &curl(d, &[&ca[..], &right, &[&agent.url("/metrics")]].concat()),
        200,
        "second scrape",
    );

    let wrong = curl(
        d,
        &[&ca[..], &["-u", "prometheus:nope", &agent.url("/metrics")]].concat(),
    );
    expect_status(&wrong, 401, "wrong password");
    let stranger = curl(
        d,
        &[
            &ca[..],
            &["-u", "mallory:scrape:me", &agent.url("/metrics")],
        ]
        .concat(),
    );
    expect_status(&stranger, 401, "unknown user");
    let mut anonymous = 0;
    for path in ["/metrics", "/healthz", "/events"] {
        let none = curl(d, &[&ca[..], &[&agent.url(path)]].concat());
        expect_status(&none, 401, &format!("{path} without credentials"));
        assert!(
            none.headers
                .to_ascii_lowercase()
                .contains("www-authenticate: basic"),
            "{path}: 401 without `WWW-Authenticate: Basic`:\n{}",
            none.headers
        );
        anonymous += 1;
    }

    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = curl(
        d,
        &[&right[..], &[&format!("http://{}/metrics", agent.addr)]].concat(),
    );
    expect_refused(&plain, "plain http to the TLS port");
    // Neither does a certificate nobody vouched for: curl without --cacert.
    expect_refused(
        &curl(d, &[&right[..], &[&agent.url("/metrics")]].concat()),
        "https without the CA",
    );

    // A client that connects and never says hello is let go (under the header timeout),
    // not held forever. The bound is generous: this checks that it happens, not how fast.
    let mut silent = TcpStream::connect(agent.addr).unwrap();
    silent.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0u8; 16];
    match silent.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("the agent sent {n} bytes to a client that never said hello"),
        Err(e) => panic!("a silent TLS client was not disconnected within {TIMEOUT:?}: {e}"),
    }

    let scraped = curl(d, &[&ca[..], &right, &[&agent.url("/metrics")]].concat());
    expect_status(&scraped, 200, "final scrape");
    let m = Metrics::parse(&scraped.body).unwrap();
    assert_eq!(
        m.get_or_zero(
            "procmon_http_auth_failures_total",
            &[("reason", "wrong_credentials")]
        ),
        2.0,
        "a wrong password and an unknown user"
    );
    assert_eq!(
        m.get_or_zero(
            "procmon_http_auth_failures_total",
            &[("reason", "no_credentials")]
        ),
        anonymous as f64
    );
    // Plain HTTP, the untrusted certificate (curl aborts the handshake) and the silent client.
    assert!(
        m.get_or_zero("procmon_http_tls_handshake_failures_total", &[]) >= 3.0,
        "{}",
        scraped.body
    );
}

#[test]
fn client_certificate_required() {
    let test = "web_config::client_certificate_required";
    if !require_root(test) || !tools(test) {
        return;
    }
    let dir = TempDir::new("web-config-mtls");
    let d = dir.path();
    certificates(d);
    // A client certificate from a CA the agent does not trust.
    make_ca(d, "other");
    make_cert(d, "other", "intruder", "extendedKeyUsage=clientAuth");
    let config = d.join("web.yml");
    fs::write(
        &config,
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
         client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: test-ca.crt\n",
    )
    .unwrap();
    let agent = TlsAgent::start(d, &config);
    let ca = ["--cacert", "test-ca.crt"];
    expect_refused(
        &curl(d, &[&ca[..], &[&agent.url("/metrics")]].concat()),
        "no client certificate",
    );
    expect_refused(
        &curl(
            d,
            &[
                &ca[..],
                &[
                    "--cert",
                    "intruder.crt",
                    "--key",
                    "intruder.key",
                    &agent.url("/metrics"),
                ],
            ]
            .concat(),
        ),
        "a client certificate from another CA",
    );
    let ok = curl(
        d,
        &[
            &ca[..],
            &[
                "--cert",
                "client.crt",
                "--key",
                "client.key",
                &agent.url("/metrics"),
            ],
        ]
        .concat(),
    );
    expect_status(&ok, 200, "with the client certificate");
    assert!(ok.body.contains("procmon_"), "{}", ok.body);
}

#[test]
fn tls13_floor_refuses_a_tls12_client_and_sighup_reloads() {
    let test = "web_config::tls13_floor_refuses_a_tls12_client_and_sighup_reloads";
    if !require_root(test) || !tools(test) {
        return;
    }
    let dir = TempDir::new("web-config-tls13");
    let d = dir.path();
    certificates(d);
    let config = d.join("web.yml");
    let write = |min: &str, password: &str| {
        fs::write(
            &config,
            format!(
                "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
                 min_version: {min}\nbasic_auth_users:\n  p: '{}'\n",
                bcrypt(password)
            ),
        )
        .unwrap()
    };
    write("TLS13", "one");
    let agent = TlsAgent::start(d, &config);
    let ca = ["--cacert", "test-ca.crt", "-u"];
    expect_refused(
        &curl(
            d,
            &[
                &ca[..],
                &["p:one", "--tls-max", "1.2", &agent.url("/healthz")],
            ]
            .concat(),
        ),
        "a TLS 1.2-only client against min_version TLS13",
    );
    expect_status(
        &curl(d, &[&ca[..], &["p:one", &agent.url("/healthz")]].concat()),
        200,
        "a TLS 1.3 client",
    );

    // SIGHUP re-reads the file: TLS 1.2 allowed, a new password in force.
    write("TLS12", "two");
    agent.signal(libc::SIGHUP);
    wait_for(TIMEOUT, || {
        agent.stderr().contains("reloaded web config").then_some(())
    })
    .unwrap_or_else(|| panic!("no reload after SIGHUP: {}", agent.stderr()));
    expect_status(
        &curl(
            d,
            &[
                &ca[..],
                &["p:two", "--tls-max", "1.2", &agent.url("/healthz")],
            ]
            .concat(),
        ),
        200,
        "TLS 1.2 and the new password after the reload",
    );
    expect_status(
        &curl(d, &[&ca[..], &["p:one", &agent.url("/healthz")]].concat()),
        401,
        "the old password after the reload",
    );

    // A broken file on SIGHUP leaves the previous config serving, and says so.
    fs::write(
        &config,
        "tls_server_config:\n  cert_file: gone.crt\n  key_file: server.key\n",
    )
    .unwrap();
    agent.signal(libc::SIGHUP);
    wait_for(TIMEOUT, || {
        agent
            .stderr()
            .contains("still serving with the previous one")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no warning for a broken reload: {}", agent.stderr()));
    expect_status(
        &curl(d, &[&ca[..], &["p:two", &agent.url("/healthz")]].concat()),
        200,
        "after a broken reload",
    );
}

/// Refused before anything starts (no root needed): exit 2, one line naming the problem.
#[test]
fn bad_web_configs_exit_2_naming_the_problem() {
    let test = "web_config::bad_web_configs_exit_2_naming_the_problem";
    if !require_tool(test, "openssl", "it makes the test's certificates") {
        return;
    }
    let dir = TempDir::new("web-config-bad");
    let d = dir.path();
    certificates(d);
    make_ca(d, "other");
    make_cert(d, "other", "stray", "subjectAltName=IP:127.0.0.1");
    fs::write(d.join("garbage.pem"), "not a certificate\n").unwrap();
    let tls = |extra: &str| {
        format!("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n{extra}")
    };
    for (name, text, needle) in [
        (
            "unknown-key",
            "tls_server_config:\n  certfile: server.crt\n".to_string(),
            "unknown field `certfile`",
        ),
        (
            "missing-cert",
            "tls_server_config:\n  cert_file: nowhere.crt\n  key_file: server.key\n".into(),
            "`tls_server_config.cert_file`: cannot read",
        ),
        (
            "not-pem",
            "tls_server_config:\n  cert_file: garbage.pem\n  key_file: server.key\n".into(),
            "`tls_server_config.cert_file`",
        ),
        (
            "wrong-key",
            "tls_server_config:\n  cert_file: server.crt\n  key_file: stray.key\n".into(),
            "is not the key of the certificate",
        ),
        (
            "old-tls",
            tls("  min_version: TLS11\n"),
            "`tls_server_config.min_version`: `TLS11`",
        ),
        (
            "bad-hash",
            "basic_auth_users:\n  alice: password\n".into(),
            "`basic_auth_users.alice`: not a bcrypt hash",
        ),
        (
            "unsupported",
            tls("  client_allowed_sans: [a]\n"),
            "`tls_server_config.client_allowed_sans`",
        ),
    ] {
        let path = d.join(format!("{name}.yml"));
        fs::write(&path, text).unwrap();
        let out = run_with_timeout(
            Command::new(procmon_bin())
                .args(["agent", "--listen", "127.0.0.1:0", "--web-config"])
                .arg(&path),
            TIMEOUT,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{name}: status {}; {err}",
            out.status
        );
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{name}: not one line:\n{err}"
        );
        assert!(
            err.contains(needle),
            "{name}: {err:?} does not say {needle:?}"
        );
        assert!(
            err.contains(&format!("{name}.yml")),
            "{name}: does not name the file: {err}"
        );
    }
    // The same check through the agent's config file.
    let toml = d.join("agent.toml");
    fs::write(
        &toml,
        format!("web_config = {:?}\n", d.join("bad-hash.yml")),
    )
    .unwrap();
    let out = run_with_timeout(
        Command::new(procmon_bin())
            .args(["agent", "--config"])
            .arg(&toml),
        TIMEOUT,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "web_config in --config: {err}");
    assert!(err.contains("not a bcrypt hash"), "{err}");
}
