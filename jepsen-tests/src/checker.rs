//! A linearizability checker in the style of Porcupine: Wing & Gong's search with Lowe's
//! memoisation (a configuration — which operations are linearized, and the model's state — is
//! explored once), per key, keys checked in parallel, with a deadline whose expiry answers
//! `Unknown`, never `Ok`.
//!
//! Operations that never returned (timeouts, lost connections) get a return time of +∞: they
//! may take effect at any point after their call, including "after everything else", which is
//! the same as never for everything observed. So a model's `step` with no output applies the
//! effect as if it happened.

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Instant;

use serde::Deserialize;
use serde::Serialize;

pub trait Model: Sync {
    type State: Clone + Eq + std::hash::Hash + std::fmt::Debug + Send + Sync;
    type Input: Clone + std::fmt::Debug + Send + Sync;
    type Output: Clone + std::fmt::Debug + Send + Sync;
    fn init(&self) -> Self::State;
    /// The state after `input` produced `output` (None: unknown, assume it took effect), or
    /// None when that output is impossible from `state`.
    fn step(&self, state: &Self::State, input: &Self::Input, output: Option<&Self::Output>) -> Option<Self::State>;
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Operation<I, O> {
    pub client: u64,
    pub key: String,
    pub input: I,
    /// None: indeterminate — it may or may not have taken effect, at any time after `call`.
    pub output: Option<O>,
    pub call: u64,
    /// None for indeterminate operations (treated as +∞).
    pub ret: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    Ok,
    Illegal,
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyResult {
    pub key: String,
    pub verdict: Verdict,
    pub ops: usize,
    /// For Illegal: how far the search got and where it was stuck.
    pub explanation: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    pub verdict: Verdict,
    pub keys: Vec<KeyResult>,
}

/// Splits the history per key and checks the keys in parallel, on at most `threads` threads.
pub fn check<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    deadline: Instant,
    threads: usize,
) -> CheckResult {
    let mut by_key: BTreeMap<&str, Vec<&Operation<_, _>>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let keys: Vec<(&str, Vec<_>)> = by_key.into_iter().collect();
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<KeyResult>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1).min(keys.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((key, ops)) = keys.get(i) else { return };
                let (verdict, explanation) = check_key(model, ops, deadline);
                let r = KeyResult { key: key.to_string(), verdict, ops: ops.len(), explanation };
                results.lock().expect("results").push(r);
            });
        }
    });
    let mut keys = results.into_inner().expect("results");
    keys.sort_by(|a, b| a.key.cmp(&b.key));
    let verdict = if keys.iter().any(|k| k.verdict == Verdict::Illegal) {
        Verdict::Illegal
    } else if keys.iter().any(|k| k.verdict == Verdict::Unknown) {
        Verdict::Unknown
    } else {
        Verdict::Ok
    };
    CheckResult { verdict, keys }
}

/// A node of the doubly linked list of call and return events (index 0 is the head).
#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    /// For a call: the index of its return event.
    partner: usize,
    prev: usize,
    next: usize,
}

const NIL: usize = usize::MAX;

fn check_key<M: Model>(
    model: &M,
    ops: &[&Operation<M::Input, M::Output>],
    deadline: Instant,
) -> (Verdict, Option<String>) {
    let n = ops.len();
    // Events sorted by time; at equal times calls come first, so touching operations count
    // as concurrent (the permissive reading: no false alarms from clock granularity).
    let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        order.push((op.call, true, i));
        order.push((op.ret.unwrap_or(u64::MAX), false, i));
    }
    order.sort_by_key(|&(t, is_call, i)| (t, !is_call, i));
    let mut ev: Vec<Event> = Vec::with_capacity(2 * n + 1);
    ev.push(Event { op: NIL, is_call: false, partner: NIL, prev: NIL, next: NIL });
    let mut ret_index = vec![0usize; n];
    for &(_, is_call, op) in &order {
        let idx = ev.len();
        ev.push(Event { op, is_call, partner: NIL, prev: idx - 1, next: NIL });
        ev[idx - 1].next = idx;
        if !is_call {
            ret_index[op] = idx;
        }
    }
    for e in ev.iter_mut().skip(1) {
        if e.is_call {
            e.partner = ret_index[e.op];
        }
    }

    let words = n.div_ceil(64).max(1);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, M::State)> = HashSet::new();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut state = model.init();
    let mut entry = ev[0].next;
    let (mut best, mut stuck_at) = (0usize, NIL);
    let mut steps = 0u64;
    while ev[0].next != NIL {
        steps += 1;
        if steps.is_multiple_of(1024) && Instant::now() > deadline {
            return (Verdict::Unknown, Some(format!("deadline passed after {steps} search steps")));
        }
        let e = ev[entry];
        if e.is_call {
            let op = ops[e.op];
            if let Some(next_state) = model.step(&state, &op.input, op.output.as_ref()) {
                let mut with = linearized.clone();
                with[e.op / 64] |= 1 << (e.op % 64);
                if cache.insert((with.clone(), next_state.clone())) {
                    stack.push((entry, state));
                    state = next_state;
                    linearized = with;
                    lift(&mut ev, entry);
                    if stack.len() > best {
                        best = stack.len();
                    }
                    entry = ev[0].next;
                    continue;
                }
            }
            entry = e.next;
        } else {
            // A return before its call was linearized: undo the last choice.
            if stack.len() == best {
                stuck_at = e.op;
            }
            let Some((call, previous)) = stack.pop() else {
                let why = format!(
                    "no linearization: at most {best} of {n} operations can be ordered; stuck before {:?}",
                    ops.get(stuck_at).map(|o| (&o.input, &o.output, o.client, o.call, o.ret))
                );
                return (Verdict::Illegal, Some(why));
            };
            state = previous;
            let op = ev[call].op;
            linearized[op / 64] &= !(1 << (op % 64));
            unlift(&mut ev, call);
            entry = ev[call].next;
        }
    }
    (Verdict::Ok, None)
}

/// Takes a call and its return out of the list.
fn lift(ev: &mut [Event], call: usize) {
    for i in [call, ev[call].partner] {
        let (p, n) = (ev[i].prev, ev[i].next);
        ev[p].next = n;
        if n != NIL {
            ev[n].prev = p;
        }
    }
}

/// Puts them back (in the reverse order of `lift`).
fn unlift(ev: &mut [Event], call: usize) {
    for i in [ev[call].partner, call] {
        let (p, n) = (ev[i].prev, ev[i].next);
        ev[p].next = i;
        if n != NIL {
            ev[n].prev = i;
        }
    }
}

/// A register with read, write and compare-and-set; starts empty. The checker's own tests use
/// it (the suite's model is the tunnel-ownership register in `checks.rs`).
#[cfg(test)]
pub struct Register;

#[cfg(test)]
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RegisterInput {
    Read,
    Write(Option<String>),
    Cas { expect: Option<String>, new: Option<String> },
}

#[cfg(test)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegisterOutput {
    Read(Option<String>),
    Written,
    Cas(bool),
}

#[cfg(test)]
impl Model for Register {
    type State = Option<String>;
    type Input = RegisterInput;
    type Output = RegisterOutput;

    fn init(&self) -> Self::State {
        None
    }

    fn step(&self, s: &Self::State, input: &RegisterInput, output: Option<&RegisterOutput>) -> Option<Self::State> {
        match (input, output) {
            (RegisterInput::Read, None) => Some(s.clone()),
            (RegisterInput::Read, Some(RegisterOutput::Read(v))) => (v == s).then(|| s.clone()),
            (RegisterInput::Write(v), None | Some(RegisterOutput::Written)) => Some(v.clone()),
            (RegisterInput::Cas { expect, new }, None) => Some(if expect == s { new.clone() } else { s.clone() }),
            (RegisterInput::Cas { expect, new }, Some(RegisterOutput::Cas(true))) => (expect == s).then(|| new.clone()),
            (RegisterInput::Cas { expect, .. }, Some(RegisterOutput::Cas(false))) => (expect != s).then(|| s.clone()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::RegisterInput as In;
    use super::RegisterOutput as Out;
    use super::*;

    type Op = Operation<In, Out>;

    fn op(client: u64, key: &str, input: In, output: Option<Out>, call: u64, ret: Option<u64>) -> Op {
        Operation { client, key: key.into(), input, output, call, ret }
    }
    fn v(s: &str) -> Option<String> {
        Some(s.to_string())
    }
    fn run(ops: &[Op]) -> Verdict {
        check(&Register, ops, Instant::now() + Duration::from_secs(10), 2).verdict
    }

    #[test]
    fn hand_made_histories() {
        let w = |c, x: &str, a, b| op(c, "k", In::Write(v(x)), Some(Out::Written), a, Some(b));
        let r = |c, x: Option<String>, a, b| op(c, "k", In::Read, Some(Out::Read(x)), a, Some(b));
        // Sequential.
        assert_eq!(run(&[w(1, "a", 0, 1), r(2, v("a"), 2, 3), w(1, "b", 4, 5), r(2, v("b"), 6, 7)]), Verdict::Ok);
        // A read overlapping a write may see either value.
        assert_eq!(run(&[w(1, "a", 0, 1), w(1, "b", 2, 10), r(2, v("a"), 3, 4), r(3, v("b"), 5, 6)]), Verdict::Ok);
        // ... but not go back once the new value was seen.
        assert_eq!(run(&[w(1, "a", 0, 1), w(1, "b", 2, 10), r(2, v("b"), 3, 4), r(3, v("a"), 5, 6)]), Verdict::Illegal);
        // A stale read after a completed write.
        assert_eq!(run(&[w(1, "a", 0, 1), w(1, "b", 2, 3), r(2, v("a"), 4, 5)]), Verdict::Illegal);
        // A value nobody wrote.
        assert_eq!(run(&[w(1, "a", 0, 1), r(2, v("z"), 2, 3)]), Verdict::Illegal);
        // Two successful CAS from the same expected value, one after the other.
        let cas = |c, a, b| {
            op(c, "k", In::Cas { expect: v("a"), new: v(&format!("c{c}")) }, Some(Out::Cas(true)), a, Some(b))
        };
        assert_eq!(run(&[w(1, "a", 0, 1), cas(2, 2, 3), cas(3, 4, 5)]), Verdict::Illegal);
        assert_eq!(run(&[w(1, "a", 0, 1), cas(2, 2, 3)]), Verdict::Ok);
        // An unanswered write: later seen, or never seen, both fine.
        let lost = op(1, "k", In::Write(v("x")), None, 2, None);
        assert_eq!(run(&[w(1, "a", 0, 1), lost.clone(), r(2, v("x"), 5, 6)]), Verdict::Ok);
        assert_eq!(run(&[w(1, "a", 0, 1), lost.clone(), r(2, v("a"), 5, 6)]), Verdict::Ok);
        // ... but not seen and then unseen.
        assert_eq!(run(&[w(1, "a", 0, 1), lost, r(2, v("x"), 5, 6), r(2, v("a"), 7, 8)]), Verdict::Illegal);
    }

    #[test]
    fn the_illegal_key_is_named() {
        let mut ops = vec![
            op(1, "good", In::Write(v("a")), Some(Out::Written), 0, Some(1)),
            op(2, "good", In::Read, Some(Out::Read(v("a"))), 2, Some(3)),
            op(1, "bad", In::Write(v("a")), Some(Out::Written), 0, Some(1)),
        ];
        ops.push(op(2, "bad", In::Read, Some(Out::Read(None)), 2, Some(3)));
        let r = check(&Register, &ops, Instant::now() + Duration::from_secs(5), 2);
        assert_eq!(r.verdict, Verdict::Illegal);
        let bad: Vec<&str> = r.keys.iter().filter(|k| k.verdict == Verdict::Illegal).map(|k| k.key.as_str()).collect();
        assert_eq!(bad, ["bad"]);
        assert!(r.keys.iter().find(|k| k.key == "bad").unwrap().explanation.is_some());
    }

    #[test]
    fn a_passed_deadline_is_unknown_never_ok() {
        let ops: Vec<Op> = (0..5000)
            .map(|i| op(i % 7, "k", In::Write(v(&i.to_string())), Some(Out::Written), i, Some(i + 3)))
            .collect();
        let r = check(&Register, &ops, Instant::now() - Duration::from_secs(1), 1);
        assert_eq!(r.verdict, Verdict::Unknown);
    }

    /// splitmix64: a tiny deterministic generator for the random histories.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Every order of the operations that respects real time, tried one by one.
    fn brute_force(ops: &[Op]) -> bool {
        fn go(ops: &[Op], used: &mut Vec<bool>, s: Option<String>) -> bool {
            if used.iter().all(|u| *u) {
                return true;
            }
            for i in 0..ops.len() {
                if used[i] {
                    continue;
                }
                // i may go next only if no unused op returned before i was called.
                let blocked =
                    (0..ops.len()).any(|j| !used[j] && j != i && ops[j].ret.map(|r| r < ops[i].call).unwrap_or(false));
                if blocked {
                    continue;
                }
                if let Some(next) = Register.step(&s, &ops[i].input, ops[i].output.as_ref()) {
                    used[i] = true;
                    if go(ops, used, next) {
                        return true;
                    }
                    used[i] = false;
                }
            }
            false
        }
        go(ops, &mut vec![false; ops.len()], None)
    }

    /// Random small histories of a real register (so many are linearizable), some outputs then
    /// corrupted (so many are not); both checkers must agree on each.
    #[test]
    fn agrees_with_brute_force_on_random_histories() {
        let mut rng = Rng(42);
        let (mut ok, mut illegal) = (0, 0);
        for _ in 0..4000 {
            let clients = 2 + rng.below(3);
            let count = 1 + rng.below(7) as usize;
            // Simulate: each op gets an interval; the register applies it at a random point
            // inside it, in order of those points.
            let mut ops: Vec<(u64, Op)> = Vec::new();
            for i in 0..count {
                let call = rng.below(20);
                let len = 1 + rng.below(8);
                let at = call + rng.below(len);
                let input = match rng.below(3) {
                    0 => In::Read,
                    1 => In::Write(v(&format!("w{i}"))),
                    _ => In::Cas {
                        expect: if rng.below(2) == 0 { None } else { v(&format!("w{}", rng.below(count as u64))) },
                        new: v(&format!("c{i}")),
                    },
                };
                let ret = if rng.below(8) == 0 { None } else { Some(call + len) };
                ops.push((at, op(rng.below(clients), "k", input, None, call, ret)));
            }
            ops.sort_by_key(|(at, _)| *at);
            let mut s: Option<String> = None;
            let mut hist = Vec::new();
            for (_, mut o) in ops {
                let out = match &o.input {
                    In::Read => Out::Read(s.clone()),
                    In::Write(x) => {
                        s = x.clone();
                        Out::Written
                    }
                    In::Cas { expect, new } => {
                        let hit = expect == &s;
                        if hit {
                            s = new.clone();
                        }
                        Out::Cas(hit)
                    }
                };
                if o.ret.is_some() {
                    o.output = Some(out);
                }
                hist.push(o);
            }
            // Corrupt some answers.
            if rng.below(2) == 0 {
                let i = rng.below(hist.len() as u64) as usize;
                if let Some(out) = &mut hist[i].output {
                    *out = match out {
                        Out::Read(_) => {
                            Out::Read(if rng.below(2) == 0 { None } else { v(&format!("w{}", rng.below(8))) })
                        }
                        Out::Cas(b) => Out::Cas(!*b),
                        Out::Written => Out::Written,
                    };
                }
            }
            let expected = brute_force(&hist);
            let got = run(&hist);
            assert_eq!(got == Verdict::Ok, expected, "disagreement on {hist:#?}");
            if expected {
                ok += 1;
            } else {
                illegal += 1;
            }
        }
        assert!(ok > 500 && illegal > 500, "both kinds must be well represented: {ok} ok, {illegal} illegal");
    }

    #[test]
    fn a_long_concurrent_history_is_checked_before_the_deadline() {
        let mut rng = Rng(7);
        let mut s: Option<String> = None;
        let mut hist = Vec::new();
        let mut t = 0;
        for i in 0..2000u64 {
            // Ten clients, each op overlapping the next few.
            t += 1 + rng.below(3);
            let input = if rng.below(2) == 0 { In::Read } else { In::Write(v(&format!("w{i}"))) };
            let out = match &input {
                In::Read => Out::Read(s.clone()),
                _ => {
                    s = v(&format!("w{i}"));
                    Out::Written
                }
            };
            hist.push(op(i % 10, "k", input, Some(out), t, Some(t + 1 + rng.below(10))));
        }
        // Operations take effect at their call here, so any overlap ordering by call is valid.
        // Within run()'s 10-second deadline, or it would be Unknown.
        assert_eq!(run(&hist), Verdict::Ok);
    }
}
