//! [`BaseUrl`]: the checked form of `O365_LOGIN_URL`, `O365_MANAGE_URL` and `O365_PUBLIC_URL`.

use std::fmt;
use std::ops::Deref;
use url::Url;

/// An `http://` or `https://` URL with a host and no query or fragment, written without a
/// trailing slash, so that `format!("{base}/path")` is always a well-formed URL. Plain http is
/// accepted for any host: the simulator is reached that way, in `docker-compose.yml` as
/// `http://o365-sim:8090`; the relay warns when `O365_PUBLIC_URL` is not https,
/// because Microsoft refuses such webhooks (AF20021).
///
/// It dereferences to `str` and compares equal to the text it holds, so it is used where the
/// base URL used to be a `String`.
#[derive(Clone, PartialEq, Eq)]
pub struct BaseUrl {
    url: Url,
    text: String,
}

impl BaseUrl {
    /// Parses and normalises `s` (lower-case scheme and host, no default port, no trailing
    /// slash). The error names the value, not the variable.
    pub fn parse(s: &str) -> Result<BaseUrl, String> {
        let url = match Url::parse(s) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => u,
            _ => return Err(format!("'{s}' is not an http(s) URL")),
        };
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!("'{s}' must not have a query or fragment"));
        }
        let text = url.as_str().trim_end_matches('/').to_string();
        Ok(BaseUrl { url, text })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Scheme, host and port: what a `contentUri` must share with `O365_MANAGE_URL`.
    pub fn origin(&self) -> url::Origin {
        self.url.origin()
    }

    /// Whether there is more than the origin (`https://host/prefix`).
    pub fn has_path(&self) -> bool {
        !matches!(self.url.path(), "" | "/")
    }

    pub fn is_https(&self) -> bool {
        self.url.scheme() == "https"
    }

    /// Whether the host is this machine (`localhost` or a loopback address).
    pub fn is_loopback(&self) -> bool {
        match self.url.host() {
            Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        }
    }
}

impl Deref for BaseUrl {
    type Target = str;

    fn deref(&self) -> &str {
        &self.text
    }
}

impl AsRef<str> for BaseUrl {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

impl PartialEq<str> for BaseUrl {
    fn eq(&self, other: &str) -> bool {
        self.text == other
    }
}

impl PartialEq<&str> for BaseUrl {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}

impl PartialEq<BaseUrl> for str {
    fn eq(&self, other: &BaseUrl) -> bool {
        self == other.text
    }
}

impl PartialEq<BaseUrl> for &str {
    fn eq(&self, other: &BaseUrl) -> bool {
        *self == other.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_normalised_without_a_trailing_slash() {
        let u = BaseUrl::parse("HTTPS://Manage.Office.com:443/").unwrap();
        assert_eq!(u, "https://manage.office.com");
        assert!(u.is_https() && !u.has_path());
        let u = BaseUrl::parse("http://127.0.0.1:8090/entra/").unwrap();
        assert_eq!(u.as_str(), "http://127.0.0.1:8090/entra");
        assert_eq!(format!("{u}/common"), "http://127.0.0.1:8090/entra/common");
        assert!(u.has_path() && !u.is_https());
    }

    #[test]
    fn loopback_hosts_are_this_machine() {
        for url in [
            "http://127.0.0.1:8080",
            "http://localhost:1",
            "http://[::1]:2",
        ] {
            assert!(BaseUrl::parse(url).unwrap().is_loopback(), "{url}");
        }
        for url in [
            "https://relay.example.com",
            "http://10.0.0.1",
            "http://localhost.evil",
        ] {
            assert!(!BaseUrl::parse(url).unwrap().is_loopback(), "{url}");
        }
    }

    #[test]
    fn only_http_and_https_without_query_or_fragment_are_base_urls() {
        for bad in [
            "ftp://manage.office.com",
            "file:///etc/passwd",
            "manage.office.com",
            "https://",
            "mailto:a@b.c",
        ] {
            let e = BaseUrl::parse(bad).unwrap_err();
            assert!(e.contains("is not an http(s) URL"), "{bad}: {e}");
        }
        for bad in [
            "https://manage.office.com/?x=1",
            "https://manage.office.com?",
            "https://manage.office.com/#top",
        ] {
            let e = BaseUrl::parse(bad).unwrap_err();
            assert!(
                e.contains("must not have a query or fragment"),
                "{bad}: {e}"
            );
        }
    }
}
