//! Measures command round-trip latency over the ssh plugin (a dev tool).
fn main() {
    let target = std::env::args().nth(1).expect("target");
    let key = std::env::args().nth(2).expect("key");
    let kh = std::env::args().nth(3).expect("known_hosts");
    let spec = cultivate_plugin_api::ConnectSpec {
        target,
        identity: Some(key),
        known_hosts: Some(kh),
        connect_timeout_secs: 5,
        keepalive_secs: 15,
        ..Default::default()
    };
    let t = std::time::Instant::now();
    let conn = cultivate_plugin_ssh::SshPlugin::new().open(&spec).unwrap();
    println!("connect {:?}", t.elapsed());
    use cultivate_plugin_api::Connection;
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let mut ch = conn.exec(&cultivate_plugin_api::ExecRequest::new(["true"])).unwrap();
        let t1 = t.elapsed();
        let out = cultivate_plugin_api::collect(ch.as_mut(), None).unwrap();
        println!("open {:?} total {:?} status {}", t1, t.elapsed(), out.status);
    }
}
