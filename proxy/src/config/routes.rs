//! `[[routes]]`: which pool a request goes to, by host and path prefix.

use serde::Deserialize;

use crate::error::ConfigError;

/// `[[routes]]`: requests whose host and path match go to `pool`. The most
/// specific route wins: an exact host before `*`, then the longest prefix.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// Host to match, without port, case-insensitive; `*` matches any.
    /// Default `*`.
    #[serde(default = "any_host")]
    pub host: String,
    /// Path prefix to match, on segment boundaries against the normalised
    /// path: `/api` matches `/api` and `/api/x`, not `/apiary`. Default `/`.
    #[serde(default = "root_path")]
    pub path_prefix: String,
    /// The pool to send to (a key of `[pools]`). Required.
    pub pool: String,
    /// Trace every request's balancing decision (a response header and a
    /// log line). Default false.
    #[serde(default)]
    pub trace: bool,
}

fn any_host() -> String {
    "*".into()
}
fn root_path() -> String {
    "/".into()
}

/// A validated route.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Lowercase host, or `None` for any.
    pub host: Option<String>,
    /// Path prefix.
    pub path_prefix: String,
    /// Index into [`super::Config::pools`].
    pub pool: usize,
    /// See [`RouteSection::trace`].
    pub trace: bool,
}

/// Validates `routes` against the pools' names (in index order), most
/// specific first. With no routes and exactly one pool, everything goes to it.
pub fn validate(routes: &[RouteSection], pool_names: &[&str]) -> Result<Vec<Route>, ConfigError> {
    let mut validated = Vec::with_capacity(routes.len().max(1));
    if routes.is_empty() {
        if pool_names.len() > 1 {
            return Err(ConfigError::at(
                "routes",
                "no routes, and more than one pool: add [[routes]] entries naming a pool each",
            ));
        }
        validated.push(Route {
            host: None,
            path_prefix: "/".into(),
            pool: 0,
            trace: false,
        });
    }
    for (i, route) in routes.iter().enumerate() {
        let key = format!("routes[{i}]");
        let pool = pool_names
            .iter()
            .position(|n| *n == route.pool)
            .ok_or_else(|| {
                ConfigError::at(
                    format!("{key}.pool"),
                    format!(
                        "no pool named {:?}; defined pools: {}",
                        route.pool,
                        pool_names.join(", ")
                    ),
                )
            })?;
        if !is_normal_prefix(&route.path_prefix) {
            return Err(ConfigError::at(
                format!("{key}.path_prefix"),
                format!(
                    "{:?} is not a normal path: it must start with '/' and have no '//', '.' or '..' segment or '%' escape (routes match normalised paths)",
                    route.path_prefix
                ),
            ));
        }
        let host = match route.host.trim() {
            "*" => None,
            "" => {
                return Err(ConfigError::at(
                    format!("{key}.host"),
                    "empty; use \"*\" to match any host",
                ));
            }
            h => Some(h.to_ascii_lowercase()),
        };
        validated.push(Route {
            host,
            path_prefix: route.path_prefix.clone(),
            pool,
            trace: route.trace,
        });
    }
    // Most specific first: exact hosts before `*`, then longer prefixes.
    validated.sort_by(|a, b| {
        b.host
            .is_some()
            .cmp(&a.host.is_some())
            .then(b.path_prefix.len().cmp(&a.path_prefix.len()))
    });
    Ok(validated)
}

/// Whether a route prefix is already in the form request paths are
/// normalised to, so that it can match them at all.
fn is_normal_prefix(prefix: &str) -> bool {
    prefix.starts_with('/')
        && !prefix.contains('%')
        && !prefix.contains("//")
        && !prefix.split('/').any(|s| s == "." || s == "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(toml_text: &str) -> Vec<RouteSection> {
        #[derive(Deserialize)]
        struct File {
            routes: Vec<RouteSection>,
        }
        toml::from_str::<File>(toml_text).unwrap().routes
    }

    #[test]
    fn routes_are_ordered_most_specific_first() {
        let r = routes(
            r#"[[routes]]
               pool = "a"
               [[routes]]
               path_prefix = "/api"
               pool = "b"
               [[routes]]
               host = "Example.COM"
               pool = "b""#,
        );
        let order: Vec<_> = validate(&r, &["a", "b"])
            .unwrap()
            .into_iter()
            .map(|r| (r.host, r.path_prefix))
            .collect();
        assert_eq!(
            order,
            vec![
                (Some("example.com".to_string()), "/".to_string()),
                (None, "/api".to_string()),
                (None, "/".to_string())
            ]
        );
    }

    #[test]
    fn a_route_to_an_unknown_pool_names_the_pools_there_are() {
        let err = validate(&routes("[[routes]]\npool = \"b\""), &["a"]).unwrap_err();
        assert_eq!(err.key(), Some("routes[0].pool"));
        assert!(err.to_string().contains("defined pools: a"), "{err}");
    }

    #[test]
    fn a_prefix_that_no_normalised_path_can_match_is_refused() {
        for bad in ["api", "/a//b", "/a/../b", "/%61"] {
            let r = routes(&format!(
                "[[routes]]\npool = \"a\"\npath_prefix = \"{bad}\""
            ));
            assert_eq!(
                validate(&r, &["a"]).unwrap_err().key(),
                Some("routes[0].path_prefix"),
                "{bad}"
            );
        }
    }

    #[test]
    fn without_routes_one_pool_takes_everything_and_two_pools_are_refused() {
        assert_eq!(validate(&[], &["a"]).unwrap().len(), 1);
        assert_eq!(
            validate(&[], &["a", "b"]).unwrap_err().key(),
            Some("routes")
        );
    }
}
