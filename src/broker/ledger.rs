//! The ledger of the shared confirm channel: which submission each return, nack and failure
//! belongs to, and when each submission may be answered.
//!
//! Why it is built so: docs/DESIGN.md, "broker/ledger".

use super::BrokerError;
use lapin::types::ShortString;
use std::sync::Mutex;
use tokio::sync::oneshot;

/// Where a submission's answer arrives.
pub(super) type Answer = oneshot::Receiver<Result<(), BrokerError>>;

/// A submission's place in the ledger. A caller that goes away before the answer (a webhook
/// client that hung up, a task aborted at shutdown) gives its place up on drop, so the
/// submissions after it are not held for ever; it was never told "published", so nothing is
/// lost (Microsoft retries, RabbitMQ redelivers).
pub(super) struct Slot<'a> {
    ledger: &'a Ledger,
    seq: u64,
    answer: Option<Answer>,
    answered: bool,
}

impl<'a> Slot<'a> {
    pub(super) fn new(ledger: &'a Ledger, seq: u64, answer: Answer) -> Slot<'a> {
        Slot {
            ledger,
            seq,
            answer: Some(answer),
            answered: false,
        }
    }

    /// Every confirm of the submission resolved: waits for its answer.
    pub(super) async fn answer(mut self) -> Result<(), BrokerError> {
        self.ledger.confirmed(self.seq);
        let rx = self.answer.take().expect("answered once");
        let r = rx
            .await
            .unwrap_or_else(|_| Err(BrokerError::Unavailable("publisher closed".into())));
        self.answered = true;
        r
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.ledger.abandon(self.seq);
        }
    }
}

/// The submissions published on one channel and not yet answered, in publish order.
#[derive(Default)]
pub(super) struct Ledger {
    state: Mutex<LedgerState>,
}

#[derive(Default)]
struct LedgerState {
    next: u64,
    open: std::collections::BTreeMap<u64, Entry>,
}

struct Entry {
    /// The routing keys of its messages (distinct).
    keys: Vec<ShortString>,
    failed: Option<BrokerError>,
    /// Every confirm of the submission resolved.
    confirmed: bool,
    answer: Option<oneshot::Sender<Result<(), BrokerError>>>,
}

impl Ledger {
    /// Registers a submission about to be published, with its messages' routing keys: its
    /// sequence number and where its answer will arrive.
    pub(super) fn open<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k ShortString>,
    ) -> (u64, Answer) {
        let mut distinct: Vec<ShortString> = Vec::new();
        for k in keys {
            if !distinct.contains(k) {
                distinct.push(k.clone());
            }
        }
        let (tx, rx) = oneshot::channel();
        let mut st = self.state.lock().expect("poisoned");
        let seq = st.next;
        st.next += 1;
        st.open.insert(
            seq,
            Entry {
                keys: distinct,
                failed: None,
                confirmed: false,
                answer: Some(tx),
            },
        );
        (seq, rx)
    }

    fn with_entry(&self, seq: u64, f: impl FnOnce(&mut Entry)) {
        if let Some(e) = self.state.lock().expect("poisoned").open.get_mut(&seq) {
            f(e);
        }
    }

    /// A publish or confirm of `seq` failed (the channel, a timeout).
    pub(super) fn fail(&self, seq: u64, why: String) {
        self.with_entry(seq, |e| {
            e.failed.get_or_insert(BrokerError::Amqp(why));
        });
    }

    /// RabbitMQ nacked a message of `seq`.
    pub(super) fn nacked(&self, seq: u64) {
        self.with_entry(seq, |e| {
            e.failed.get_or_insert(BrokerError::Nacked(
                "RabbitMQ refused to take the message".into(),
            ));
        });
    }

    /// A return popped: every unanswered submission with a message of that key fails.
    pub(super) fn returned(&self, key: &ShortString) {
        let mut st = self.state.lock().expect("poisoned");
        for e in st.open.values_mut().filter(|e| e.keys.contains(key)) {
            e.failed
                .get_or_insert_with(|| BrokerError::Unroutable(key.to_string()));
        }
    }

    /// Every confirm of `seq` resolved: answer, in order, every submission at the head whose
    /// confirms all resolved.
    fn confirmed(&self, seq: u64) {
        let mut st = self.state.lock().expect("poisoned");
        if let Some(e) = st.open.get_mut(&seq) {
            e.confirmed = true;
        }
        Self::answer_head(&mut st);
    }

    /// The caller went away: forget its submission (and unblock the ones after it).
    fn abandon(&self, seq: u64) {
        let mut st = self.state.lock().expect("poisoned");
        st.open.remove(&seq);
        Self::answer_head(&mut st);
    }

    fn answer_head(st: &mut LedgerState) {
        while let Some(mut first) = st.open.first_entry() {
            if !first.get().confirmed {
                break;
            }
            let e = first.get_mut();
            if let Some(tx) = e.answer.take() {
                let _ = tx.send(match e.failed.take() {
                    Some(err) => Err(err),
                    None => Ok(()),
                });
            }
            first.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    //! The real ledger, driven through the orderings RabbitMQ and lapin produce: after each
    //! event, which submissions are answered, and with what.

    use super::*;

    /// What happens on the channel, to submission `i` (by position in the table's list).
    #[derive(Clone, Copy, Debug)]
    enum Event {
        /// A confirm of some submission carried a return of this routing key.
        Return(&'static str),
        /// Every confirm of submission `i` resolved.
        Confirm(usize),
        /// RabbitMQ nacked a message of submission `i`.
        Nack(usize),
        /// A publish or confirm of submission `i` failed.
        Fail(usize),
        /// The caller of submission `i` went away.
        Abandon(usize),
    }
    use Event::*;

    /// What a submission's answer is, once it has one.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Said {
        Published,
        Unroutable(&'static str),
        Nacked,
        Failed,
        /// No answer will come (its caller went away).
        Gone,
    }
    use Said::*;

    struct Case {
        name: &'static str,
        /// Each submission's routing keys, in publish order.
        submissions: &'static [&'static [&'static str]],
        /// Each event, and the submissions it answers (with their answers), in that order.
        steps: &'static [(Event, &'static [(usize, Said)])],
    }

    const CASES: &[Case] = &[
        Case {
            name: "open → confirmed: published",
            submissions: &[&["a"]],
            steps: &[(Confirm(0), &[(0, Published)])],
        },
        Case {
            name: "open → returned → confirmed: unroutable",
            submissions: &[&["a"]],
            steps: &[(Return("a"), &[]), (Confirm(0), &[(0, Unroutable("a"))])],
        },
        Case {
            name: "a return of another key leaves a submission alone",
            submissions: &[&["a"]],
            steps: &[(Return("b"), &[]), (Confirm(0), &[(0, Published)])],
        },
        Case {
            name: "a return after the answer changes nothing already said",
            submissions: &[&["a"], &["a"]],
            steps: &[
                (Confirm(0), &[(0, Published)]),
                (Return("a"), &[]),
                (Confirm(1), &[(1, Unroutable("a"))]),
            ],
        },
        Case {
            name: "a later submission confirmed first waits for the earlier one",
            submissions: &[&["a"], &["b"]],
            steps: &[
                (Confirm(1), &[]),
                (Confirm(0), &[(0, Published), (1, Published)]),
            ],
        },
        Case {
            name: "returned after its own confirm, before it was answered: still fails it",
            submissions: &[&["a"], &["b"]],
            steps: &[
                (Confirm(1), &[]),
                // B's return popped on A's confirm (lapin hands the oldest return to whichever
                // confirm resolves next): B is confirmed but not yet answered.
                (Return("b"), &[]),
                (Confirm(0), &[(0, Published), (1, Unroutable("b"))]),
            ],
        },
        Case {
            name: "a return fails every open submission of its key: a duplicate, never a loss",
            submissions: &[&["a"], &["a", "b"], &["b"]],
            steps: &[
                (Return("a"), &[]),
                (Confirm(2), &[]),
                (Confirm(0), &[(0, Unroutable("a"))]),
                (Confirm(1), &[(1, Unroutable("a")), (2, Published)]),
            ],
        },
        Case {
            name: "a nack fails its own submission only",
            submissions: &[&["a"], &["a"]],
            steps: &[
                (Nack(1), &[]),
                (Confirm(1), &[]),
                (Confirm(0), &[(0, Published), (1, Nacked)]),
            ],
        },
        Case {
            name: "a failed publish fails its own submission only",
            submissions: &[&["a"], &["b"]],
            steps: &[
                (Fail(0), &[]),
                (Confirm(0), &[(0, Failed)]),
                (Confirm(1), &[(1, Published)]),
            ],
        },
        Case {
            name: "the first failure is the answer",
            submissions: &[&["a"], &["b"]],
            steps: &[
                (Return("a"), &[]),
                (Nack(0), &[]),
                (Nack(1), &[]),
                (Return("b"), &[]),
                (Confirm(1), &[]),
                (Confirm(0), &[(0, Unroutable("a")), (1, Nacked)]),
            ],
        },
        Case {
            name: "an abandoned submission unblocks the ones after it",
            submissions: &[&["a"], &["b"], &["c"]],
            steps: &[
                (Confirm(2), &[]),
                (Confirm(1), &[]),
                (Abandon(0), &[(0, Gone), (1, Published), (2, Published)]),
            ],
        },
        Case {
            name: "abandoned after its confirm but before its answer: the rest still answered",
            submissions: &[&["a"], &["b"]],
            steps: &[
                (Confirm(1), &[]),
                (Abandon(1), &[(1, Gone)]),
                (Confirm(0), &[(0, Published)]),
            ],
        },
        Case {
            name: "interleaved: each answered in publish order, each with its own fate",
            submissions: &[&["a"], &["b"], &["c"], &["a"]],
            steps: &[
                (Confirm(2), &[]),
                (Return("c"), &[]),
                (Confirm(0), &[(0, Published)]),
                (Nack(3), &[]),
                (Confirm(3), &[]),
                (Return("a"), &[]),
                (
                    Confirm(1),
                    &[(1, Published), (2, Unroutable("c")), (3, Nacked)],
                ),
            ],
        },
    ];

    fn said(r: Result<Result<(), BrokerError>, oneshot::error::TryRecvError>) -> Option<Said> {
        match r {
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Gone),
            Ok(Ok(())) => Some(Published),
            Ok(Err(BrokerError::Unroutable(k))) => Some(Unroutable(
                // Back to the table's &'static str, so the answers compare whole.
                ["a", "b", "c"]
                    .into_iter()
                    .find(|c| *c == k)
                    .expect("a key of the table"),
            )),
            Ok(Err(BrokerError::Nacked(_))) => Some(Nacked),
            Ok(Err(BrokerError::Amqp(_))) => Some(Failed),
            Ok(Err(other)) => panic!("unexpected answer {other}"),
        }
    }

    #[test]
    fn each_submission_is_answered_in_order_with_what_rabbitmq_said_about_its_own_messages() {
        for case in CASES {
            let ledger = Ledger::default();
            let mut opened: Vec<(u64, Option<Answer>)> = case
                .submissions
                .iter()
                .map(|keys| {
                    let keys: Vec<ShortString> = keys.iter().map(|k| (*k).into()).collect();
                    let (seq, rx) = ledger.open(&keys);
                    (seq, Some(rx))
                })
                .collect();
            for (step, (event, want)) in case.steps.iter().enumerate() {
                match *event {
                    Return(k) => ledger.returned(&k.into()),
                    Confirm(i) => ledger.confirmed(opened[i].0),
                    Nack(i) => ledger.nacked(opened[i].0),
                    Fail(i) => ledger.fail(opened[i].0, "channel closed".into()),
                    Abandon(i) => ledger.abandon(opened[i].0),
                }
                // Every answer that arrived with this step, in publish order.
                let got: Vec<(usize, Said)> = opened
                    .iter_mut()
                    .enumerate()
                    .filter_map(|(i, (_, rx))| {
                        let answer = said(rx.as_mut()?.try_recv())?;
                        *rx = None;
                        Some((i, answer))
                    })
                    .collect();
                assert_eq!(got, *want, "{}: after step {step} ({event:?})", case.name);
            }
            let unanswered: Vec<usize> = opened
                .iter()
                .enumerate()
                .filter(|(_, (_, rx))| rx.is_some())
                .map(|(i, _)| i)
                .collect();
            assert!(
                unanswered.is_empty(),
                "{}: never answered: {unanswered:?}",
                case.name
            );
            assert!(
                ledger.state.lock().unwrap().open.is_empty(),
                "{}: the ledger forgets every answered submission",
                case.name
            );
        }
    }

    #[tokio::test]
    async fn a_slot_dropped_unanswered_gives_its_place_up() {
        let ledger = Ledger::default();
        let a: ShortString = "a".into();
        let (first, first_rx) = ledger.open([&a]);
        let (second, second_rx) = ledger.open([&a]);
        let second_slot = Slot::new(&ledger, second, second_rx);
        drop(Slot::new(&ledger, first, first_rx));
        assert_eq!(second_slot.answer().await.ok(), Some(()));
        assert!(ledger.state.lock().unwrap().open.is_empty());
    }
}
