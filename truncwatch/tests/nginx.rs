//! nginx from Debian: `sendfile on; send_timeout 1s;` gives up on a reader that stalls, closes
//! the connection with most of a 30 MiB file unsent, and logs the request as a success.
mod support;

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::{Agent, fetch, kernel_or_skip, u};

const NGINX: &str = "/usr/sbin/nginx";
const FILE_BYTES: u64 = 30 << 20;

struct Nginx {
    child: Child,
    port: u16,
    _dir: std::path::PathBuf,
}

impl Nginx {
    fn start() -> Nginx {
        let dir = std::env::temp_dir().join(format!("truncwatch-nginx-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("www")).unwrap();
        std::fs::write(dir.join("www/big.bin"), vec![b'n'; FILE_BYTES as usize]).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let d = dir.display();
        let conf = format!(
            "worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log info;
             events {{ worker_connections 64; }}
             http {{
               access_log {d}/access.log;
               client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};
               uwsgi_temp_path {d}; scgi_temp_path {d};
               sendfile on; send_timeout 1s;
               server {{ listen 127.0.0.1:{port}; root {d}/www; }}
             }}"
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new(NGINX)
            .args(["-c", &format!("{d}/nginx.conf"), "-p", &d.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: the workers must go when the master does (an orphaned
            // worker outlives the test and holds its output pipes open).
            .process_group(0)
            .spawn()
            .expect("start nginx");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx { child, port, _dir: dir }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

fn nginx_or_skip(test: &str) -> bool {
    if !kernel_or_skip(test) {
        return false;
    }
    if std::path::Path::new(NGINX).exists() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {NGINX} missing in CI (cargo xtask test installs it)");
    }
    support::skip(test, &format!("{NGINX} not installed (apt-get install nginx-light)"));
    false
}

#[test]
fn nginx_send_timeout_is_a_short_write() {
    if !nginx_or_skip("nginx_send_timeout_is_a_short_write") {
        return;
    }
    let agent = Agent::start();
    let ngx = Nginx::start();
    let ep = format!("tcp:127.0.0.1:{}", ngx.port);
    let local = format!("127.0.0.1:{}", ngx.port);
    // Reads 1 MB of body, then stalls 3 s: nginx's 1 s send_timeout fires meanwhile.
    let got = fetch(&ep, &["--path", "/big.bin", "--stall-after", "1000000", "--stall", "3s"]);
    assert_eq!(got[0]["complete"], false, "nginx should have cut it: {}", got[0]);
    let v = agent.wait_for(&local, 1, Duration::from_secs(30));
    assert_eq!(v.len(), 1, "{v:?}");
    let v = &v[0];
    assert_eq!(v["verdict"], "short_write", "{v}");
    assert_eq!(v["comm"], "nginx");
    assert_eq!(u(&v["sent_bytes"]), u(&got[0]["received_bytes"]), "agent bytes = client bytes: {v}");
    assert_eq!(u(&v["expected_bytes"]), u(&got[0]["head_bytes"]) + FILE_BYTES);
    assert_eq!(u(&v["content_length"]), FILE_BYTES);

    // The same file to a reader that does not stall: complete, never flagged.
    let ok = fetch(&ep, &["--path", "/big.bin", "--requests", "2"]);
    assert!(ok.iter().all(|r| r["complete"] == true));
    let v = agent.wait_for(&local, 3, Duration::from_secs(30));
    assert_eq!(v.len(), 3, "{v:?}");
    assert!(v[1..].iter().all(|x| x["verdict"] == "complete" && u(&x["sent_bytes"]) == u(&ok[0]["received_bytes"])), "{v:?}");

    // HEAD: nginx answers with Content-Length and no body. Never flagged.
    let heads = fetch(&ep, &["--path", "/big.bin", "--method", "HEAD", "--requests", "3"]);
    assert!(heads.iter().all(|r| r["complete"] == true), "{heads:?}");
    std::thread::sleep(Duration::from_millis(500));
    let after = agent.verdicts(&local);
    assert_eq!(after.len(), 3, "HEAD answers must not be judged: {after:?}");
}
