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
