//! `meridian key create`: a new random key, printed once, and the entry for the auth file.

use clap::Args;

use meridian_http::auth::{generate, validate_key_name, Access, KeyRing};

#[derive(Debug, Args)]
pub struct KeyArgs {
    /// The key's name: logged with every refusal and admin request (never the key itself).
    #[arg(long)]
    pub name: String,
    /// read, write or admin.
    #[arg(long)]
    pub access: String,
    /// The collections the access covers, comma-separated; `*` for all.
    #[arg(long, value_delimiter = ',', required = true)]
    pub collections: Vec<String>,
    /// When the key stops working: an RFC 3339 time (2027-01-31T00:00:00Z) or a duration from
    /// now (90days, 12h).
    #[arg(long)]
    pub expires: Option<String>,
}

impl KeyArgs {
    /// The key and the file entry, or why the arguments are wrong.
    pub fn run(&self) -> anyhow::Result<(String, String)> {
        validate_key_name(&self.name).map_err(anyhow::Error::msg)?;
        let access: Access = self.access.parse().map_err(anyhow::Error::msg)?;
        let expires = match &self.expires {
            None => None,
            Some(s) => Some(match humantime::parse_rfc3339_weak(s) {
                Ok(t) => t,
                Err(_) => {
                    let d = humantime::parse_duration(s).map_err(|_| {
                        anyhow::anyhow!(
                            "--expires {s:?} is neither an RFC 3339 time nor a duration such as 90days"
                        )
                    })?;
                    std::time::SystemTime::now() + d
                }
            }),
        };
        let (key, hash) = generate();
        let grants: Vec<String> = self
            .collections
            .iter()
            .map(|c| format!("{} = \"{access}\"", toml_key(c)))
            .collect();
        let mut entry = format!(
            "[[keys]]\nname = \"{}\"\nhash = \"{hash}\"\naccess = {{ {} }}\n",
            self.name,
            grants.join(", ")
        );
        if let Some(t) = expires {
            entry += &format!("expires = \"{}\"\n", humantime::format_rfc3339_seconds(t));
        }
        // the entry must be one the node accepts: collection names, duplicates, all of it
        KeyRing::parse(&entry).map_err(anyhow::Error::msg)?;
        Ok((key, entry))
    }
}

/// A TOML key: bare when it can be, quoted otherwise (`*`).
fn toml_key(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        s.to_owned()
    } else {
        format!("{s:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_http::auth::Lookup;

    fn args(access: &str, collections: &[&str], expires: Option<&str>) -> KeyArgs {
        KeyArgs {
            name: "web".into(),
            access: access.into(),
            collections: collections.iter().map(|s| s.to_string()).collect(),
            expires: expires.map(Into::into),
        }
    }

    #[test]
    fn the_printed_entry_holds_the_printed_key() {
        let (key, entry) = args("write", &["users", "settings"], Some("30days"))
            .run()
            .unwrap();
        assert!(key.starts_with("mdk_") && key.len() == 68, "{key}");
        assert!(!entry.contains(&key), "the file holds a hash, not the key");
        let ring = KeyRing::parse(&entry).unwrap();
        let Lookup::Valid(k) = ring.lookup(&key, std::time::SystemTime::now()) else {
            panic!("{entry}")
        };
        assert_eq!(k.level("users"), Some(Access::Write));
        assert_eq!(k.level("settings"), Some(Access::Write));
        assert_eq!(k.level("other"), None);
        assert!(k.expires.is_some());
        let (_, all) = args("admin", &["*"], None).run().unwrap();
        assert!(all.contains("\"*\" = \"admin\""), "{all}");
    }

    #[test]
    fn bad_arguments_are_refused() {
        for (a, wanted) in [
            (args("owner", &["users"], None), "read, write or admin"),
            (args("read", &["us/ers"], None), "collection"),
            (args("read", &["users"], Some("someday")), "--expires"),
            (
                KeyArgs {
                    name: "a b".into(),
                    ..args("read", &["users"], None)
                },
                "key name",
            ),
        ] {
            let err = a.run().unwrap_err().to_string();
            assert!(err.contains(wanted), "{err} should mention {wanted}");
        }
    }
}
