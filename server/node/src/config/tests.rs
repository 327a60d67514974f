use super::*;

#[test]
fn flags_override_the_file_which_overrides_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.toml");
    std::fs::write(
        &path,
        "region = \"eu\"\nlisten = \"127.0.0.1:1\"\ncache_mb = 8\nsync_max_documents = 5\n",
    )
    .unwrap();
    let c = ServeArgs {
        config: Some(path.clone()),
        listen: Some("0.0.0.0:9".into()),
        ..Default::default()
    }
    .resolve()
    .unwrap();
    assert_eq!(c.region, "eu");
    assert_eq!(c.listen, "0.0.0.0:9");
    assert_eq!(c.cache_mb, 8);
    assert_eq!(c.max_in_flight, 1024);
    assert_eq!(c.clients().max_docs_per_connection, 5);
    assert_eq!(c.store().cache_bytes, 8 << 20);

    std::fs::write(&path, "regoin = \"eu\"\n").unwrap();
    let err = ServeArgs {
        config: Some(path.clone()),
        ..Default::default()
    }
    .resolve()
    .unwrap_err();
    assert!(err.to_string().contains("invalid config file"), "{err}");
    // the file cannot name another config file
    std::fs::write(&path, "config = \"x.toml\"\n").unwrap();
    assert!(ServeArgs {
        config: Some(path),
        ..Default::default()
    }
    .resolve()
    .is_err());
    let err = ServeArgs {
        node_id: Some("a/b".into()),
        ..Default::default()
    }
    .resolve()
    .unwrap_err();
    assert!(err.to_string().contains("node id"), "{err}");
    let err = ServeArgs {
        sync_max_connections: Some(0),
        ..Default::default()
    }
    .resolve()
    .unwrap_err();
    assert!(err.to_string().contains("sync_max_connections"), "{err}");
    for bad in [0, 100 * 365 * 86_400] {
        let err = ServeArgs {
            feed_retention_secs: Some(bad),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("feed_retention_secs"), "{err}");
    }
}

#[test]
fn the_defaults_are_the_parts_defaults() {
    let s = ServeArgs::default().resolve().unwrap();
    assert_eq!(s.limits().max_body, Limits::default().max_body);
    assert_eq!(s.store().cache_bytes, StoreConfig::new("x").cache_bytes);
    assert_eq!(
        s.replication().anti_entropy_every,
        ReplicationConfig::new(vec![]).anti_entropy_every
    );
    assert_eq!(
        s.replication().feed_retention,
        ReplicationConfig::new(vec![]).feed_retention
    );
    assert_eq!(
        s.clients().max_message_bytes,
        SyncLimits::default().max_message_bytes
    );
    assert_eq!(s.listen, "127.0.0.1:7070");
}

#[test]
fn peers_need_a_secret_an_id_and_valid_urls() {
    let args = |peers: &[&str], secret: Option<&str>, id: Option<&str>| ServeArgs {
        peers: peers.iter().map(|s| s.to_string()).collect(),
        cluster_secret: secret.map(str::to_owned),
        node_id: id.map(str::to_owned),
        ..Default::default()
    };
    let ok = args(
        &["us=http://127.0.0.1:1/"],
        Some("s3cret-s3cret"),
        Some("eu"),
    )
    .resolve()
    .unwrap();
    assert_eq!(ok.peers[0].addr, "http://127.0.0.1:1");
    for (a, wanted) in [
        (args(&["us=http://h"], None, Some("eu")), "cluster-secret"),
        (
            args(&["us=http://h"], Some("short"), Some("eu")),
            "cluster-secret",
        ),
        (
            args(&["us=http://h"], Some("s3cret-s3cret"), None),
            "node-id",
        ),
        (args(&["us"], Some("s3cret-s3cret"), Some("eu")), "ID=URL"),
        (
            args(&["us=ftp://h"], Some("s3cret-s3cret"), Some("eu")),
            "http:// or https://",
        ),
        (
            args(&["us=https://h"], Some("s3cret-s3cret"), Some("eu")),
            "--peer-ca",
        ),
        (
            ServeArgs {
                tls_cert: Some("c.pem".into()),
                ..Default::default()
            },
            "go together",
        ),
        (
            ServeArgs {
                require_peer_cert: Some(true),
                ..Default::default()
            },
            "--require-peer-cert needs",
        ),
        (
            ServeArgs {
                peer_client_cert: Some("c.pem".into()),
                peer_client_key: Some("c.key".into()),
                ..Default::default()
            },
            "needs --peer-ca",
        ),
        (
            args(&["u/s=http://h"], Some("s3cret-s3cret"), Some("eu")),
            "node id",
        ),
        (
            args(&["eu=http://h"], Some("s3cret-s3cret"), Some("eu")),
            "own id",
        ),
        (
            args(
                &["us=http://h", "us=http://i"],
                Some("s3cret-s3cret"),
                Some("eu"),
            ),
            "twice",
        ),
        (
            ServeArgs {
                feed_mode: Some("push".into()),
                ..Default::default()
            },
            "feed_mode",
        ),
    ] {
        let err = a.resolve().unwrap_err().to_string();
        assert!(err.contains(wanted), "{err} should mention {wanted}");
    }
}
#[test]
fn public_urls_name_this_node_or_a_peer_once_each() {
    let args = |public: &[&str]| ServeArgs {
        peers: vec!["us=http://10.0.0.2:7070".into()],
        peer_public_urls: public.iter().map(|s| s.to_string()).collect(),
        cluster_secret: Some("s3cret-s3cret".into()),
        node_id: Some("eu".into()),
        ..Default::default()
    };
    // the same list on every node: this node's own entry is allowed
    let ok = args(&["us=https://us.example.com/", "eu=https://eu.example.com"])
        .resolve()
        .unwrap();
    assert_eq!(ok.peer_public_urls[0].addr, "https://us.example.com");
    assert_eq!(ok.peers[0].addr, "http://10.0.0.2:7070");
    for (public, wanted) in [
        (
            &["ap=https://ap.example.com"][..],
            "neither this node nor a --peer",
        ),
        (&["us=https://a", "us=https://b"][..], "twice"),
        (&["us=ftp://h"][..], "http:// or https://"),
        (&["us"][..], "ID=URL"),
    ] {
        let err = args(public).resolve().unwrap_err().to_string();
        assert!(err.contains(wanted), "{err} should mention {wanted}");
    }
}

#[test]
fn the_listen_address_is_host_and_port() {
    let args = |listen: &str| ServeArgs {
        listen: Some(listen.into()),
        ..Default::default()
    };
    for good in ["127.0.0.1:7070", "[::]:7070", "localhost:0"] {
        args(good).resolve().unwrap();
    }
    for bad in [
        "7070",
        "not an address",
        ":7070",
        "127.0.0.1:http",
        "127.0.0.1:70000",
    ] {
        let err = args(bad).resolve().unwrap_err().to_string();
        assert!(err.contains("host:port"), "{bad}: {err}");
    }
}
