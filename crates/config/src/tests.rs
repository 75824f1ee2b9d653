// `Jail::expect_with` takes closures returning figment's (large) error type.
#![allow(clippy::result_large_err)]

use figment::Jail;

use super::*;

// Every test runs in a `Jail`, which serialises access to the process environment that
// `Config` reads its overrides from.

#[test]
fn defaults_are_valid_and_a_file_overrides_them() {
    Jail::expect_with(|_| {
        let config = Config::from_toml("[api]\nlisten = \"0.0.0.0:9000\"\n").unwrap();
        assert_eq!(config.api.listen.port(), 9000);
        assert_eq!(config.nats.url, "nats://127.0.0.1:4222");
        Ok(())
    });
}

#[test]
fn the_environment_overrides_the_file() {
    Jail::expect_with(|jail| {
        jail.set_env("XIBAAR_API__LISTEN", "127.0.0.1:7000");
        jail.set_env("XIBAAR_CONFIG", "ignored.toml");
        let config = Config::from_toml("[api]\nlisten = \"0.0.0.0:9000\"\n").unwrap();
        assert_eq!(config.api.listen.port(), 7000);
        Ok(())
    });
}

#[test]
fn an_unknown_key_fails_with_its_name() {
    Jail::expect_with(|_| {
        let err = Config::from_toml("[api]\nlisten_on = \"0.0.0.0:9000\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen_on"), "{err}");
        Ok(())
    });
}

#[test]
fn a_cluster_is_named_by_several_urls_and_a_bad_one_is_named_in_the_error() {
    Jail::expect_with(|_| {
        let config =
            Config::from_toml("[nats]\nurl = \"nats://a:4222, nats://b:4222,nats://c:4222\"\n")
                .unwrap();
        assert!(config.nats.url.contains("nats://b:4222"));
        let err = Config::from_toml("[nats]\nurl = \"nats://a:4222,nats://b:42x22\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nats.url") && err.contains("nats://b:42x22"),
            "{err}"
        );
        Ok(())
    });
}

#[test]
fn an_invalid_value_fails_with_its_key() {
    Jail::expect_with(|_| {
        let err = Config::from_toml("[api]\nlisten = \"not an address\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("api.listen"), "{err}");
        let err = Config::from_toml("[auth]\nhs256_secret = \"short\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("auth.hs256_secret"), "{err}");
        let err = Config::from_toml("[dispatcher]\nfanout_max_backlog = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("dispatcher.fanout_max_backlog"), "{err}");
        Ok(())
    });
}

#[test]
fn secrets_never_print_and_can_come_from_a_file() {
    Jail::expect_with(|jail| {
        jail.create_file("secret", "0123456789abcdef0123456789abcdef\n")?;
        let toml = "[auth]\nhs256_secret_file = \"secret\"\n\
                    [postgres]\nurl = \"postgres://u:hunter2@db/x\"\n";
        let config = Config::from_toml(toml).unwrap();
        let secret = config.jwt_secret().unwrap().unwrap();
        assert_eq!(secret.expose(), "0123456789abcdef0123456789abcdef");
        let printed = format!("{config:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        Ok(())
    });
}

#[test]
fn the_shipped_example_is_valid() {
    Jail::expect_with(|_| {
        Config::from_toml(include_str!("../../../deploy/xibaar.example.toml")).unwrap();
        Ok(())
    });
}

#[test]
fn a_secret_file_alone_names_the_postgres_url_and_both_are_refused() {
    Jail::expect_with(|jail| {
        jail.create_file("pg-url", "postgres://xibaar:s3cret@db:5432/xibaar\n")?;
        jail.set_env("XIBAAR_POSTGRES__URL_FILE", "pg-url");
        let config = Config::from_toml("").unwrap();
        assert_eq!(
            config.postgres_url().unwrap().expose(),
            "postgres://xibaar:s3cret@db:5432/xibaar"
        );
        let err = Config::from_toml("[postgres]\nurl = \"postgres://a@b/c\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("postgres.url"), "{err}");
        Ok(())
    });
    Jail::expect_with(|_| {
        let config = Config::from_toml("").unwrap();
        assert_eq!(
            config.postgres_url().unwrap().expose(),
            DEFAULT_POSTGRES_URL
        );
        Ok(())
    });
}

/// `KEY=value` lines of an environment file, comments and blank lines left out.
fn env_lines(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').expect("KEY=value");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

#[test]
fn the_compose_deployment_names_only_settings_the_code_knows_and_every_one_of_them() {
    let env = include_str!("../../../deploy/compose/xibaar.env.example");
    let toml = include_str!("../../../deploy/compose/xibaar.toml");
    Jail::expect_with(|jail| {
        let lines = env_lines(env);
        for (key, value) in &lines {
            jail.set_env(key, value);
        }
        // Unknown keys are refused (deny_unknown_fields), so a typo fails here.
        let config = Config::from_toml(toml).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.nats.stream_replicas, 3);
        assert_eq!(config.nats.url.split(',').count(), 3);
        assert_eq!(config.fcm.apps.len(), 1);
        // Every scalar key of the example configuration is listed, commented out or not.
        let example = include_str!("../../../deploy/xibaar.example.toml");
        let listed = env.to_owned();
        let mut section = String::new();
        for line in example.lines() {
            let line = line.trim().trim_start_matches("# ");
            if line.starts_with("[[") {
                section.clear();
            } else if let Some(s) = line.strip_prefix('[') {
                section = s.trim_end_matches(']').to_uppercase();
            } else if let Some((key, _)) = line.split_once(" = ")
                && !section.is_empty()
                && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            {
                let name = format!("XIBAAR_{section}__{}", key.to_uppercase());
                let secret_file = name.ends_with("_FILE")
                    || name == "XIBAAR_POSTGRES__URL"
                    || name == "XIBAAR_AUTH__HS256_SECRET"
                    || name == "XIBAAR_AUTH__JWKS_FILE"
                    || name == "XIBAAR_NATS__CREDENTIALS_FILE";
                assert!(
                    listed.contains(&name) || secret_file,
                    "{name} is not in deploy/compose/xibaar.env.example"
                );
            }
        }
        Ok(())
    });
}

#[test]
fn the_kubernetes_configuration_loads() {
    let manifest = include_str!("../../../deploy/k8s/config.yaml");
    // The TOML is the block under `xibaar.toml: |`, indented four spaces.
    let toml: String = manifest
        .split("xibaar.toml: |\n")
        .nth(1)
        .expect("the ConfigMap holds xibaar.toml")
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    Jail::expect_with(|_| {
        let config = Config::from_toml(&toml).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.nats.stream_replicas, 3);
        assert_eq!(config.api.listen.port(), 8080);
        assert!(config.archive.enabled());
        assert_eq!(
            config.archive.stream_retention,
            Some(Duration::from_secs(30 * 86400))
        );
        Ok(())
    });
}

#[test]
fn an_archive_retention_shorter_than_a_segment_and_an_outage_is_refused() {
    Jail::expect_with(|_| {
        let archive = "[archive]\nbucket = \"xibaar-archive\"\n";
        let ok = Config::from_toml(&format!("{archive}stream_retention = \"30d\"\n")).unwrap();
        assert_eq!(
            ok.archive.minimum_stream_retention(),
            Duration::from_secs(7 * 86400 + 600)
        );
        let err = Config::from_toml(&format!("{archive}stream_retention = \"7d\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("archive.stream_retention"), "{err}");
        assert!(err.contains("archive.outage_allowance"), "{err}");
        // Without an archive the stream's retention cannot be shortened.
        let err = Config::from_toml("[archive]\nstream_retention = \"30d\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("set archive.bucket"), "{err}");
        for (bad, key) in [
            ("bucket = \"Upper_Case\"", "archive.bucket"),
            (
                "bucket = \"ok-bucket\"\nendpoint = \"ftp://x\"",
                "archive.endpoint",
            ),
            (
                "bucket = \"ok-bucket\"\nprefix = \"/lead\"",
                "archive.prefix",
            ),
            (
                "bucket = \"ok-bucket\"\nsegment_max_events = 0",
                "archive.segment_max_events",
            ),
            ("bucket = \"ok-bucket\"\nlease = \"10ms\"", "archive.lease"),
        ] {
            let err = Config::from_toml(&format!("[archive]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{bad}: {err}");
        }
        Ok(())
    });
}

#[test]
fn archive_credentials_come_from_files_or_the_aws_variables_and_never_show() {
    Jail::expect_with(|jail| {
        jail.create_file("secret", "s3cr3t\n")?;
        let config = Config::from_toml(
            "[archive]\nbucket = \"xibaar-archive\"\naccess_key_id = \"AKIA\"\nsecret_access_key_file = \"secret\"\n",
        )
        .unwrap();
        let credentials = config.archive.credentials().unwrap();
        assert_eq!(credentials.secret_access_key.expose(), "s3cr3t");
        assert!(!format!("{config:?}").contains("s3cr3t"));
        assert!(!format!("{credentials:?}").contains("AKIA"));
        jail.set_env("AWS_ACCESS_KEY_ID", "from-env");
        jail.set_env("AWS_SECRET_ACCESS_KEY", "env-secret");
        let config = Config::from_toml("[archive]\nbucket = \"xibaar-archive\"\n").unwrap();
        let credentials = config.archive.credentials().unwrap();
        assert_eq!(credentials.access_key_id.expose(), "from-env");
        Ok(())
    });
}
