//! The redirector-backed [`Attributor`]: takes the kernel's attribution record of the accepted socket's peer
//! (spec §7.3) and builds the claims from it (spec §6). Linux only. It must never hand out a record for any
//! peer but its own, or claims for a process other than the recorded one.

use std::net::SocketAddr;
use std::sync::Arc;

use super::{Attribution, Attributor, Lookup};
use crate::identity::IdentityResolver;
use crate::redirect::Redirector;

/// Attribution from the eBPF redirector's records and `/proc`.
#[derive(Debug)]
pub struct KernelAttributor {
    redirector: Arc<Redirector>,
    identity: IdentityResolver,
}

impl KernelAttributor {
    pub fn new(redirector: Arc<Redirector>) -> KernelAttributor {
        KernelAttributor {
            redirector,
            identity: IdentityResolver::new(),
        }
    }
}

impl Attributor for KernelAttributor {
    fn attribute(&self, peer: SocketAddr) -> Attribution {
        match self.redirector.take(peer) {
            None => Attribution::Direct,
            Some(record) => Attribution::Redirected {
                original_dst: record.original_dst,
                identity: self.identity.claims(&record, peer),
            },
        }
    }

    /// The record is taken here (one `gpa_take` run in the kernel); the claims come from the identity caches
    /// when they hold the instance, else from a blocking thread.
    fn lookup(self: Arc<Self>, peer: SocketAddr) -> Lookup {
        let Some(record) = self.redirector.take(peer) else {
            return Lookup::Done(Attribution::Direct);
        };
        let original_dst = record.original_dst;
        if let Some(identity) = self.identity.cached_claims(&record, peer) {
            return Lookup::Done(Attribution::Redirected {
                original_dst,
                identity,
            });
        }
        Lookup::Blocking(Box::new(move || Attribution::Redirected {
            original_dst,
            identity: self.identity.claims(&record, peer),
        }))
    }
}
