//! The client-to-server half of the relay: which requests are forwarded as they are, which
//! are rewritten (named statements in transaction mode), what each puts in flight (a commit,
//! a rollback) and which answers the server now owes.

use super::*;

impl Relay {
    /// Relays every complete client frame at the front of `input`, stopping after a Terminate.
    /// Frames go through unchanged where they can ([`Forwarded::verbatim`]: nothing is copied)
    /// and into `out` from the first one that must be rewritten. The caller drops the used bytes
    /// of `input` only once they have reached the server, so a request whose first write fails is
    /// still there to go elsewhere.
    pub fn client_to_server(
        &mut self,
        input: &[u8],
        max: usize,
        statements: &mut Statements,
        server: &mut ServerSide<'_>,
        out: &mut BytesMut,
    ) -> Result<(ClientStep, Forwarded), ProtoError> {
        let mut pos = 0;
        let mut copying = false;
        let forwarded = |pos: usize, end: usize, copying: bool| Forwarded {
            used: pos,
            end,
            verbatim: !copying,
        };
        while let Some(h) = peek_header(&input[pos..], max)? {
            if !is_frontend_tag(h.tag) {
                return Err(ProtoError::Unexpected {
                    tag: h.tag as char,
                    during: "a session",
                });
            }
            let start = pos;
            let Some(msg) = input.get(pos..pos + h.wire_len) else {
                break;
            };
            pos += h.wire_len;
            let rewrite = self.mode == PoolMode::Transaction
                && matches!(h.tag, fe::PARSE | fe::BIND | fe::DESCRIBE | fe::CLOSE)
                && names_a_statement(h.tag, &msg[5..]);
            // A Query's or Parse's text is scanned once, for what it mentions and what it may
            // commit.
            let mut text_effect = None;
            if matches!(h.tag, fe::QUERY | fe::PARSE) {
                let text = if h.tag == fe::QUERY {
                    query_text(&msg[5..])
                } else {
                    crate::sql::parse_text(&msg[5..])
                };
                let scanned = scan(text);
                text_effect = Some(Effect::of_text(text, scanned.first_semicolon));
                let m = scanned.mentions;
                self.names_search_path |= m.search_path;
                if m.listen && self.mode == PoolMode::Transaction {
                    // Its server connection would hear for the next client: closed, not pooled.
                    self.listened = true;
                    self.discard = true;
                }
            }
            if let Some(built) = server.built.as_deref_mut() {
                session_state::note_message(built, h.tag, &msg[5..], self.copy_in);
            }
            self.note_commit(h.tag, &msg[5..], text_effect, statements);
            if rewrite {
                if !copying {
                    out.extend_from_slice(&input[..start]);
                    copying = true;
                }
                let frame = Frame {
                    tag: h.tag,
                    body: Bytes::copy_from_slice(&msg[5..]),
                };
                self.rewrite(frame, statements, server, out)?;
                continue;
            }
            match h.tag {
                fe::TERMINATE => {
                    return Ok((ClientStep::Terminate, forwarded(pos, start, copying)));
                }
                fe::QUERY | fe::FUNCTION_CALL => {
                    self.expect.push_back(Expect::Ready { sync: false })
                }
                fe::SYNC => {
                    // In copy-in mode the server ignores a Sync: no answer is owed for it.
                    if !self.copy_in {
                        self.expect.push_back(Expect::Ready { sync: true });
                    }
                    self.unsynced = false;
                }
                fe::COPY_DONE | fe::COPY_FAIL => self.copy_in = false,
                fe::PARSE => self
                    .expect
                    .push_back(Expect::ParseComplete { injected: false }),
                fe::CLOSE => self
                    .expect
                    .push_back(Expect::CloseComplete { injected: false }),
                fe::BIND | fe::DESCRIBE | fe::EXECUTE => self.unsynced = true,
                _ => {}
            }
            if matches!(h.tag, fe::PARSE | fe::CLOSE) {
                self.unsynced = true;
            }
            if copying {
                out.extend_from_slice(msg);
            }
        }
        Ok((ClientStep::Continue, forwarded(pos, pos, copying)))
    }

    /// Classifies by what reaches the server, whatever the protocol: a Query with a committing
    /// statement anywhere in it, or an Execute of a portal bound to one (or to a statement or
    /// portal not known here), puts a commit in flight; so does any request sent while a
    /// rollback is unanswered (it runs outside the transaction block). A Parse records what the
    /// unnamed statement would do, a Bind what its portal would.
    fn note_commit(
        &mut self,
        tag: u8,
        body: &[u8],
        text_effect: Option<Effect>,
        statements: &Statements,
    ) {
        let effect = match tag {
            fe::QUERY => text_effect.unwrap_or_else(|| Effect::of(body)),
            fe::EXECUTE => match cstr_at_start(body) {
                Some([]) => self.unnamed_portal,
                Some(_) => self.named_portals,
                None => None,
            }
            .unwrap_or(Effect::UNKNOWN),
            fe::FUNCTION_CALL => Effect::default(),
            fe::PARSE => {
                if let Some(text) = body.strip_prefix(&[0]) {
                    self.unnamed_statement = text_effect.unwrap_or_else(|| Effect::of(text));
                }
                return;
            }
            fe::BIND => {
                let effect = match cstr_after_first(body) {
                    Some([]) => self.unnamed_statement,
                    Some(name) => statements.get(name).map_or(Effect::UNKNOWN, |s| s.effect),
                    None => Effect::UNKNOWN,
                };
                match cstr_at_start(body) {
                    Some([]) => self.unnamed_portal = Some(effect),
                    _ => {
                        let all = self.named_portals.unwrap_or_default();
                        self.named_portals = Some(all.or(effect));
                    }
                }
                return;
            }
            _ => return,
        };
        self.commit_in_flight |= effect.commits() || self.rollback_in_flight;
        self.rollback_in_flight |= effect.rolls_back();
    }

    /// Transaction mode: named statements get their server-side names, and are prepared on this
    /// server connection first when it lacks them.
    fn rewrite(
        &mut self,
        frame: Frame,
        st: &mut Statements,
        server: &mut ServerSide<'_>,
        out: &mut BytesMut,
    ) -> Result<(), ProtoError> {
        self.unsynced = true;
        match frame.tag {
            fe::PARSE => {
                let parse = Parse::decode(&frame)?;
                if parse.name.is_empty() {
                    self.expect
                        .push_back(Expect::ParseComplete { injected: false });
                    frame.encode(out);
                    return Ok(());
                }
                let s = st.prepare(parse)?;
                if server.prepared.contains(&s.server_name) || server.prepared.is_uncertain() {
                    // Another client's identical statement (or maybe one, after an error made
                    // the record uncertain): replace it (same text, same name).
                    self.inject_close(&s.server_name, out);
                }
                self.note_prepared(&s.server_name, server, out);
                s.parse.renamed(&s.server_name).encode(out);
                self.expect
                    .push_back(Expect::ParseComplete { injected: false });
            }
            fe::BIND => {
                let bind = Bind::decode(&frame)?;
                match st.get(&bind.statement) {
                    Some(s) if !bind.statement.is_empty() => {
                        let s = s.clone();
                        self.ensure_prepared(&s.server_name, &s.parse, server, out);
                        bind.with_statement(&s.server_name).encode(out);
                    }
                    _ => frame.encode(out),
                }
            }
            _ => self.rewrite_target(frame, st, server, out)?,
        }
        Ok(())
    }

    fn rewrite_target(
        &mut self,
        frame: Frame,
        st: &mut Statements,
        server: &mut ServerSide<'_>,
        out: &mut BytesMut,
    ) -> Result<(), ProtoError> {
        let target = Target::decode(&frame)?;
        let is_close = frame.tag == fe::CLOSE;
        if is_close {
            self.expect
                .push_back(Expect::CloseComplete { injected: false });
        }
        if target.kind == TargetKind::Portal || target.name.is_empty() {
            frame.encode(out);
            return Ok(());
        }
        let known = if is_close {
            st.close(&target.name)
        } else {
            st.get(&target.name).cloned()
        };
        match known {
            Some(s) if is_close => {
                server.prepared.remove(&s.server_name);
                Target::encode(fe::CLOSE, TargetKind::Statement, &s.server_name).encode(out);
            }
            Some(s) => {
                self.ensure_prepared(&s.server_name, &s.parse, server, out);
                Target::encode(fe::DESCRIBE, TargetKind::Statement, &s.server_name).encode(out);
            }
            None => frame.encode(out),
        }
        Ok(())
    }

    fn ensure_prepared(
        &mut self,
        name: &Bytes,
        parse: &Parse,
        server: &mut ServerSide<'_>,
        out: &mut BytesMut,
    ) {
        if server.prepared.contains(name) {
            server.prepared.touch(name);
            return;
        }
        // Close first: harmless if absent, and it covers a statement we lost track of.
        self.inject_close(name, out);
        self.note_prepared(name, server, out);
        parse.renamed(name).encode(out);
        self.expect
            .push_back(Expect::ParseComplete { injected: true });
    }

    /// Records a statement prepared on the server, closing the least recently used one there if
    /// the connection then holds more than `max_prepared_statements`.
    fn note_prepared(&mut self, name: &Bytes, server: &mut ServerSide<'_>, out: &mut BytesMut) {
        if let Some(evicted) = server.prepared.insert(name.clone(), server.max_prepared) {
            self.inject_close(&evicted, out);
        }
    }

    fn inject_close(&mut self, name: &[u8], out: &mut BytesMut) {
        Target::encode(fe::CLOSE, TargetKind::Statement, name).encode(out);
        self.expect
            .push_back(Expect::CloseComplete { injected: true });
    }
}
