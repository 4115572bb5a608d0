//! Names unique to one test, so that tests run side by side against the same RabbitMQ and
//! Redis without seeing each other's messages or keys.

/// A short random id (12 hex digits) for names unique to one test.
pub fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// The names one test relay uses: `{kind}.{id}.audit` (exchange), `{kind}.{id}.content` (work
/// queue), `{kind}.{id}.sink` (the test's queue bound to the exchange) and `{kind}:{id}:` (Redis
/// prefix), plus a webhook auth id.
#[derive(Clone, Debug)]
pub struct Names {
    pub id: String,
    pub exchange: String,
    pub work_queue: String,
    pub sink: String,
    pub prefix: String,
    pub auth_id: String,
}

impl Names {
    /// Fresh names; `kind` (`test`, `rel`, …) tells whose they are when one is left behind.
    pub fn new(kind: &str) -> Names {
        let id = unique();
        Names {
            exchange: format!("{kind}.{id}.audit"),
            work_queue: format!("{kind}.{id}.content"),
            sink: format!("{kind}.{id}.sink"),
            prefix: format!("{kind}:{id}:"),
            auth_id: format!("auth-{}", uuid::Uuid::new_v4().simple()),
            id,
        }
    }

    /// The same names with another Redis prefix (one a test prepared keys under).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Names {
        self.prefix = prefix.into();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_sets_of_names_share_nothing() {
        let (a, b) = (Names::new("test"), Names::new("test"));
        assert_ne!(a.id, b.id);
        for (x, y) in [
            (&a.exchange, &b.exchange),
            (&a.work_queue, &b.work_queue),
            (&a.sink, &b.sink),
            (&a.prefix, &b.prefix),
            (&a.auth_id, &b.auth_id),
        ] {
            assert_ne!(x, y);
        }
        assert_eq!(a.prefix, format!("test:{}:", a.id));
        assert_eq!(a.exchange, format!("test.{}.audit", a.id));
    }
}
