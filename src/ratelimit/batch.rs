//! Group commit for the Redis store: while one script call is in flight, decisions queue,
//! and the next call carries up to [`MAX_BATCH`] of them at once.

use super::redis::RedisLimiter;
use super::{Ceiling, Policy};

impl RedisLimiter {
    /// Runs `call` in the next script invocation (group commit). While one batch is in
    /// flight, decisions queue; when it returns, the first of them leads the queue's batch
    /// of up to [`MAX_BATCH`]. An idle limiter sends a lone decision at once; a busy one
    /// sends one script, one write and one read for many decisions.
    pub(super) async fn batched(&self, call: Call) -> redis::RedisResult<Vec<i64>> {
        let queued = {
            let mut st = self.batches.lock().unwrap_or_else(|p| p.into_inner());
            if st.leading {
                let (tx, rx) = tokio::sync::oneshot::channel();
                st.queue.push(Waiter { call, tx });
                Err(rx)
            } else {
                st.leading = true;
                Ok(call)
            }
        };
        let (own, others) = match queued {
            Ok(call) => (call, Vec::new()),
            Err(rx) => match rx.await {
                Ok(Turn::Done(result)) => return result,
                Ok(Turn::Lead(own, others)) => (own, others),
                Err(_) => return Err(abandoned()),
            },
        };
        // Hands the queue on when this batch ends, also if this future is dropped.
        let _lead = Leading(self);
        // Identical calls (same keys and policies: one caller's repeated requests) go as one
        // group with a count, and the script decides them one after another. Entry 0 is the
        // leader's own call.
        let mut entries: Vec<(Call, Option<Sender>)> = vec![(own, None)];
        entries.extend(others.into_iter().map(|w| (w.call, Some(w.tx))));
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for i in 0..entries.len() {
            match groups.iter_mut().find(|g| entries[g[0]].0 == entries[i].0) {
                Some(g) => g.push(i),
                None => groups.push(vec![i]),
            }
        }
        let mut inv = self.script.prepare_invoke();
        inv.arg(groups.len());
        for g in &groups {
            let call = &entries[g[0]].0;
            inv.arg(g.len()).arg(call.policies);
            for k in &call.keys {
                inv.key(k);
            }
            for a in &call.args {
                inv.arg(*a);
            }
        }
        inv.key("{agm}:seq");
        let result = async {
            let mut conn = self.conn().await?;
            inv.invoke_async::<Vec<i64>>(&mut conn).await
        }
        .await;
        // The answers come back in group order. A reply of any other length is an error for
        // every decision in the batch, never a default answer.
        let expected: usize = entries.iter().map(|(c, _)| c.answer_len()).sum();
        let result = result.and_then(|out| {
            if out.len() == expected {
                Ok(out)
            } else {
                Err(redis::RedisError::from((
                    redis::ErrorKind::Parse,
                    "the rate-limit script's reply has the wrong length",
                    format!("{} values for {expected}", out.len()),
                )))
            }
        });
        let mut rest = result.as_ref().map(|v| v.as_slice());
        let mut mine = Err(abandoned());
        for g in groups {
            for i in g {
                let answer = match &mut rest {
                    Ok(out) => {
                        let (this, tail) = out.split_at(entries[i].0.answer_len());
                        *out = tail;
                        Ok(this.to_vec())
                    }
                    Err(e) => Err((*e).clone()),
                };
                match entries[i].1.take() {
                    Some(tx) => {
                        let _ = tx.send(Turn::Done(answer));
                    }
                    None => mine = answer,
                }
            }
        }
        mine
    }

    /// Ends a batch: the first live waiter leads the next one, or the limiter goes idle.
    fn hand_over(&self) {
        let mut st = self.batches.lock().unwrap_or_else(|p| p.into_inner());
        while !st.queue.is_empty() {
            let n = st.queue.len().min(MAX_BATCH);
            let mut next: Vec<Waiter> = st.queue.drain(..n).collect();
            let first = next.remove(0);
            match first.tx.send(Turn::Lead(first.call, next)) {
                Ok(()) => return,
                // That caller gave up (its budget ran out): the next one leads.
                Err(turn) => {
                    if let Turn::Lead(_, rest) = turn {
                        let tail = std::mem::take(&mut st.queue);
                        st.queue = rest;
                        st.queue.extend(tail);
                    }
                }
            }
        }
        st.leading = false;
    }
}

/// Decisions per script invocation at most.
const MAX_BATCH: usize = 64;

/// One decision's keys and script arguments.
#[derive(PartialEq)]
pub(super) struct Call {
    policies: usize,
    pub(super) keys: Vec<String>,
    pub(super) args: Vec<u64>,
}

impl Call {
    pub(super) fn new(checks: &[(String, &Policy)]) -> Call {
        let mut keys = Vec::with_capacity(2 * checks.len());
        let mut args = Vec::with_capacity(6 * checks.len());
        for (key, p) in checks {
            let window_us = p.window.as_micros() as u64;
            let (mode, ceiling_key) = match p.ceiling() {
                Ceiling::Gcra => (0, "log"),
                Ceiling::Log => (1, "log"),
                // Its own key: a policy changed by a reload never meets a key of another type.
                Ceiling::Slots => (2, "slots"),
            };
            keys.push(format!("{{agm}}:gcra:{key}"));
            keys.push(format!("{{agm}}:{ceiling_key}:{key}"));
            args.extend([
                window_us,
                // 0: no GCRA key (see `Policy::gcra`).
                if p.gcra() {
                    window_us.div_ceil(u64::from(p.requests))
                } else {
                    0
                },
                u64::from(p.burst),
                u64::from(p.requests),
                mode,
                window_us.div_ceil(super::SLOTS).max(1),
            ]);
        }
        Call {
            policies: checks.len(),
            keys,
            args,
        }
    }

    /// The script's answer to one such decision: denied, wait, and per policy remaining
    /// and reset.
    fn answer_len(&self) -> usize {
        2 + 2 * self.policies
    }
}

/// The group commit's state: whether a batch is in flight, and who waits for the next.
#[derive(Default)]
pub(super) struct Batches {
    leading: bool,
    queue: Vec<Waiter>,
}

struct Waiter {
    call: Call,
    tx: Sender,
}

type Sender = tokio::sync::oneshot::Sender<Turn>;

/// What a waiting decision is told.
enum Turn {
    /// Its answer came back in someone else's batch.
    Done(redis::RedisResult<Vec<i64>>),
    /// It leads the next batch: its own call, and the waiters after it.
    Lead(Call, Vec<Waiter>),
}

/// Held by a batch's leader; hands the queue on when dropped.
struct Leading<'a>(&'a RedisLimiter);

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        self.0.hand_over();
    }
}

fn abandoned() -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Io,
        "the Redis batch carrying this decision was abandoned",
    ))
}
