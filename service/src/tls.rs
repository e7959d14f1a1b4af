//! What a TLS failure talking to the controller means, in words that say
//! what to fix. Both the agent and the admin CLI use it, so the same mistake
//! gets the same advice.

use std::error::Error;
use std::path::Path;

/// The rustls error somewhere in `e`'s source chain. `std::io::Error` hides
/// its payload from `source()`, so look inside those too.
fn rustls_error<'a>(e: &'a (dyn Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(r) = rustls_error(inner) {
                    return Some(r);
                }
            }
        }
        cur = err.source();
    }
    None
}

/// Explain a failed request to `url` if TLS is why, naming the fix. `ca` is
/// the CA certificate the client was given (None: the system roots).
pub fn explain(e: &(dyn Error + 'static), url: &str, ca: Option<&Path>) -> Option<String> {
    use rustls::CertificateError as C;
    let host = url
        .split_once("://")
        .map_or(url, |(_, r)| r)
        .split(['/', '?'])
        .next()
        .unwrap_or_default();
    let host = host
        .rsplit_once(':')
        .filter(|(h, p)| {
            !h.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':')
        })
        .map_or(host, |(h, _)| h)
        .trim_matches(['[', ']']);
    let trust = match ca {
        Some(ca) => format!("the CA certificate {}", ca.display()),
        None => "the system's trusted roots".to_owned(),
    };
    let msg = match rustls_error(e)? {
        rustls::Error::InvalidCertificate(C::NotValidForName)
        | rustls::Error::InvalidCertificate(C::NotValidForNameContext { .. }) => format!(
            "the controller's certificate is not valid for {host:?}: use a URL with a host name \
             the certificate names, or make a certificate for this one \
             (`wardnet-controller ca init --host {host}`)"
        ),
        // BadSignature: a CA with the same name as the real issuer (two
        // `ca init`s) signed something else.
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            let fix = match ca {
                Some(_) => "check that it is the CA that signed the controller's certificate (ca.crt from `ca init`)",
                None => "pass the CA that signed it with --ca-cert (or set it in the config)",
            };
            format!("the controller's certificate is not signed by {trust}: {fix}")
        }
        rustls::Error::InvalidCertificate(C::Expired)
        | rustls::Error::InvalidCertificate(C::ExpiredContext { .. }) => {
            "the controller's certificate has expired (or this machine's clock is wrong): renew it on the controller".to_owned()
        }
        rustls::Error::InvalidCertificate(C::NotValidYet)
        | rustls::Error::InvalidCertificate(C::NotValidYetContext { .. }) => {
            "the controller's certificate is not valid yet: check this machine's clock".to_owned()
        }
        rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => format!(
            "{url} did not answer in TLS: it is probably a plain-HTTP port. \
             Use http:// only if the controller really serves plain HTTP (local tests), \
             otherwise check the port"
        ),
        other => format!("TLS failed: {other}"),
    };
    Some(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_host_for_a_name_mismatch() {
        let e = std::io::Error::other(rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForName,
        ));
        let m = explain(&e, "https://controller.example:8443/v1", None).expect("tls");
        assert!(m.contains("\"controller.example\""), "{m}");
        assert!(m.contains("ca init --host controller.example"), "{m}");
    }

    #[test]
    fn another_ca_of_the_same_name_is_named_as_the_wrong_ca() {
        for e in [
            rustls::CertificateError::UnknownIssuer,
            rustls::CertificateError::BadSignature,
        ] {
            let e = rustls::Error::InvalidCertificate(e);
            let m =
                explain(&e, "https://c:8443", Some(Path::new("/etc/wardnet/ca.crt"))).expect("tls");
            assert!(
                m.contains("not signed by the CA certificate /etc/wardnet/ca.crt"),
                "{m}"
            );
        }
    }

    #[test]
    fn plain_http_port_says_so() {
        let e = rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType);
        let m = explain(&e, "https://127.0.0.1:8080", None).expect("tls");
        assert!(m.contains("plain-HTTP port"), "{m}");
    }

    #[test]
    fn other_errors_are_not_tls() {
        let e = std::io::Error::other("connection refused");
        assert!(explain(&e, "https://x", None).is_none());
    }
}
