//! The secure-channel API client (spec §2.2): status, acquire and attest, as own calls to the configured
//! WireServer (spec §3.7). Status and acquire are unsigned; the attestation is signed with the key just
//! acquired (golden vector V3).
//!
//! This module must never log a key, and never accept a key that fails validation (spec §2.7).

use std::net::SocketAddr;

use bytes::Bytes;
use http::StatusCode;
use msp_core::wire::{self, Key, KeyStatus, WireError};

use crate::hostcall::{HostCallError, HostClient, HostResponse, OwnCall};
use crate::snapshot::ReadyKey;

/// `Metadata` as the agent sends it: `True`, without trailing whitespace (spec §2.2, decided).
pub const METADATA_VALUE: &str = "True";

/// Why a secure-channel call failed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error(transparent)]
    Call(#[from] HostCallError),
    #[error("{0}")]
    Invalid(#[from] WireError),
}

/// A validated status response plus the headers the host clock needs (spec §2.12).
#[derive(Debug)]
pub struct StatusReply {
    pub status: KeyStatus,
    pub host_date: Option<Vec<u8>>,
    pub date: Option<Vec<u8>>,
}

/// The secure-channel API of one WireServer.
#[derive(Debug, Clone, Copy)]
pub struct SecureChannel {
    pub client: HostClient,
    pub wireserver: SocketAddr,
}

impl SecureChannel {
    fn call<'a>(
        &self,
        method: http::Method,
        target: String,
        content_type: bool,
        body: &'static str,
        date: String,
        sign: Option<&'a ReadyKey>,
    ) -> OwnCall<'a> {
        let mut headers = vec![("metadata", METADATA_VALUE.to_owned())];
        if content_type {
            headers.push(("content-type", "application/json".to_owned()));
        }
        OwnCall {
            method,
            dest: self.wireserver,
            target,
            headers,
            body: Bytes::from_static(body.as_bytes()),
            date,
            sign,
        }
    }

    /// `GET /secure-channel/status`: any 2xx, then parsed and validated (spec §2.3).
    pub async fn status(&self, date: String) -> Result<StatusReply, ChannelError> {
        let call = self.call(
            http::Method::GET,
            "/secure-channel/status".to_owned(),
            false,
            "",
            date,
            None,
        );
        let resp = self.client.call(call).await?.expect(|s| s.is_success())?;
        let header =
            |r: &HostResponse, name: &str| r.headers.get(name).map(|v| v.as_bytes().to_vec());
        let host_date = header(&resp, msp_core::sign::DATE_HEADER);
        let date = header(&resp, "date");
        let status = KeyStatus::parse(resp.body.as_bytes())?;
        Ok(StatusReply {
            status,
            host_date,
            date,
        })
    }

    /// `POST /secure-channel/key`: exactly 200 and a valid `Key` (spec §2.7).
    pub async fn acquire(&self, date: String) -> Result<Key, ChannelError> {
        let call = self.call(
            http::Method::POST,
            "/secure-channel/key".to_owned(),
            true,
            wire::KEY_REQUEST_BODY,
            date,
            None,
        );
        let resp = self
            .client
            .call(call)
            .await?
            .expect(|s| s == StatusCode::OK)?;
        Ok(Key::parse(resp.body.as_bytes())?)
    }

    /// `POST /secure-channel/key/<guid>/key-attestation`, signed with `key`: exactly 200.
    pub async fn attest(&self, date: String, key: &ReadyKey) -> Result<(), ChannelError> {
        let target = format!("/secure-channel/key/{}/key-attestation", key.guid);
        let call = self.call(http::Method::POST, target, false, "", date, Some(key));
        self.client
            .call(call)
            .await?
            .expect(|s| s == StatusCode::OK)?;
        Ok(())
    }
}
