//! The server-to-client half of the relay: passing answers on (large rows in pieces), dropping
//! the answers to messages the relay injected, and noticing where a transaction ends.

use super::*;

impl Relay {
    /// Relays every complete server frame at the front of `input`: unchanged where it can
    /// ([`Forwarded::verbatim`]: nothing is copied), into `out` from the first frame that is
    /// dropped (a response to a message the relay injected, a FATAL "shutting down"). Returns
    /// whether a ReadyForQuery went by (the only point where the server connection can be
    /// released). The caller drops the used bytes once they are relayed.
    pub fn server_to_client(
        &mut self,
        input: &[u8],
        params: &mut ClientParams,
        server: &mut ServerSide<'_>,
        out: &mut BytesMut,
    ) -> Result<(bool, Forwarded), ProtoError> {
        let mut saw_ready = false;
        // The rest of a message being passed through in pieces comes first.
        let mut pos = input.len().min(*server.passthrough as usize);
        *server.passthrough -= pos as u32;
        let mut copying = false;
        while *server.passthrough == 0
            && let Some(h) = peek_header(&input[pos..], MAX_SERVER_MESSAGE)?
        {
            let Some(msg) = input.get(pos..pos + h.wire_len) else {
                if streams(h.tag) && h.wire_len > STREAM_OVER {
                    // Too large to hold: what has come of it goes now, the rest as it comes.
                    if copying {
                        out.extend_from_slice(&input[pos..]);
                    }
                    *server.passthrough = (h.wire_len - (input.len() - pos)) as u32;
                    pos = input.len();
                }
                break;
            };
            let body = &msg[5..];
            let forward = match h.tag {
                be::READY_FOR_QUERY => {
                    saw_ready = true;
                    self.answered = self.answered.saturating_add(1);
                    self.on_ready(body)?;
                    if let Some(built) = server.built.as_deref_mut() {
                        built.ready(self.status);
                    }
                    true
                }
                be::PARAMETER_STATUS | be::ERROR_RESPONSE => {
                    let f = Frame {
                        tag: h.tag,
                        body: Bytes::copy_from_slice(body),
                    };
                    self.observe(&f, params, server)?
                }
                be::COMMAND_COMPLETE => {
                    if body.starts_with(b"DISCARD") || body.starts_with(b"DEALLOCATE") {
                        server.prepared.clear();
                    }
                    self.read_back_search_path |= body == b"RESET\0"
                        || body == b"DISCARD ALL\0"
                        || (body == b"SET\0" && self.names_search_path);
                    true
                }
                be::PARSE_COMPLETE => {
                    let injected = self.take(|e| matches!(e, Expect::ParseComplete { .. }));
                    if let Some(built) = server.built.as_deref_mut().filter(|_| !injected) {
                        built.op_done();
                    }
                    !injected
                }
                be::COPY_IN_RESPONSE => {
                    if let Some(number) = self.on_copy_in()
                        && let Some(built) = server.built.as_deref_mut()
                    {
                        built.sync_ignored(number);
                    }
                    true
                }
                be::CLOSE_COMPLETE => {
                    let injected = self.take(|e| matches!(e, Expect::CloseComplete { .. }));
                    if let Some(built) = server.built.as_deref_mut().filter(|_| !injected) {
                        built.op_done();
                    }
                    !injected
                }
                _ => true,
            };
            if !forward && !copying {
                out.extend_from_slice(&input[..pos]);
                copying = true;
            } else if forward && copying {
                out.extend_from_slice(msg);
            }
            pos += h.wire_len;
        }
        Ok((
            saw_ready,
            Forwarded {
                used: pos,
                end: pos,
                verbatim: !copying,
            },
        ))
    }

    /// The server entered copy-in mode, where it ignores Sync: the Sync a driver sends right
    /// after the Execute that started COPY FROM STDIN (libpq and tokio-postgres do) gets no
    /// ReadyForQuery, and neither do Syncs sent until CopyDone or CopyFail.
    ///
    /// Returns the number of the request that Sync was (counted from the attachment's first).
    fn on_copy_in(&mut self) -> Option<u64> {
        self.copy_in = true;
        let i = (self.expect.iter()).position(|e| *e == Expect::Ready { sync: true })?;
        let before = self.expect.iter().take(i).filter(|e| e.is_ready()).count();
        self.expect.remove(i);
        Some(u64::from(self.answered) + before as u64)
    }

    /// Pops the expected response if it matches; true if it was one the relay injected.
    fn take(&mut self, is: impl Fn(&Expect) -> bool) -> bool {
        match self.expect.front() {
            Some(e) if is(e) => {
                let injected = matches!(
                    e,
                    Expect::ParseComplete { injected: true }
                        | Expect::CloseComplete { injected: true }
                );
                self.expect.pop_front();
                injected
            }
            _ => false,
        }
    }

    fn on_ready(&mut self, body: &[u8]) -> Result<(), ProtoError> {
        self.status = match body.first() {
            Some(b'I') => TxStatus::Idle,
            Some(b'T') => TxStatus::InTransaction,
            Some(b'E') => TxStatus::Failed,
            _ => {
                return Err(ProtoError::Malformed {
                    what: "ReadyForQuery status",
                });
            }
        };
        while let Some(e) = self.expect.pop_front() {
            if e.is_ready() {
                break;
            }
        }
        self.query_cancelled = false;
        if self.status == TxStatus::Idle {
            // Outside a transaction block no portal outlives its Sync.
            self.unnamed_portal = None;
            self.named_portals = None;
        }
        if !self.unsynced && !self.busy() {
            // Everything sent has been answered: no commit is in flight any more.
            self.commit_in_flight = false;
            self.rollback_in_flight = false;
        }
        Ok(())
    }

    /// Looks at a ParameterStatus or ErrorResponse; returns whether to relay it.
    fn observe(
        &mut self,
        f: &Frame,
        params: &mut ClientParams,
        server: &mut ServerSide<'_>,
    ) -> Result<bool, ProtoError> {
        if f.tag == be::PARAMETER_STATUS {
            let (k, v) = backend::decode_parameter_status(f)?;
            params.observe(&k, &v);
            server.params.insert(k, v);
            return Ok(true);
        }
        // ErrorResponse: the server skips everything up to the next Sync, so do our expectations.
        let mut skipped_parse = false;
        let mut built = server.built.as_deref_mut();
        while let Some(e) = self.expect.front().filter(|e| !e.is_ready()) {
            skipped_parse |= matches!(e, Expect::ParseComplete { .. });
            if let (
                Expect::ParseComplete { injected: false }
                | Expect::CloseComplete { injected: false },
                Some(b),
            ) = (e, built.as_deref_mut())
            {
                b.op_skipped();
            }
            self.expect.pop_front();
        }
        if let Some(b) = built {
            b.error();
        }
        if skipped_parse {
            // A Parse the record counted as done was skipped: the record no longer tells what
            // the server has.
            server.prepared.forget_uncertain();
        }
        let e = ErrorFields::decode(f)?;
        let going_away = e.code.starts_with("57P");
        self.evidence |= going_away || e.code == switchyard_proto::sqlstate::READ_ONLY_TRANSACTION;
        if !e.is_fatal() {
            return Ok(true);
        }
        let fatal = match (going_away, self.mode) {
            (true, PoolMode::Transaction) => Fatal::ServerGoingAway,
            (true, PoolMode::Session) => Fatal::SessionEnded,
            (false, _) => Fatal::Other,
        };
        self.server_fatal = Some(fatal);
        if fatal == Fatal::SessionEnded {
            *server.held_fatal = Some(f.clone());
        }
        Ok(fatal == Fatal::Other)
    }
}
