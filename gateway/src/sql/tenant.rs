//! Whose database a `/sql` request runs on, as its connection string or API key says.

use ringgate_pool::Credentials;

use crate::cache::Weigh;

/// Whose database the request runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Project id: the first label of the connection string's host (`alpha.db.example` →
    /// `alpha`), or the database name when the host is an IP address or a single label.
    pub project: String,
    /// Database, role and password from the connection string.
    pub credentials: Credentials,
}

impl Weigh for Tenant {
    fn heap_bytes(&self) -> usize {
        let c = &self.credentials;
        self.project.capacity()
            + c.database.capacity()
            + c.user.capacity()
            + c.password.capacity()
            + c.options.capacity()
    }
}
