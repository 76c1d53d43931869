//! [`FairQueue`]: the CVMs waiting for a boot slot, shared fairly between
//! users. Slots go round-robin by user (each user with a CVM waiting gets
//! one slot per round, in the order they joined the round), and within a
//! user first come, first served: one user's 50 waiting CVMs cannot starve
//! another user's one, which boots within the next round.
//!
//! A pure value: no clock, no I/O. The node holds one, decides when a slot
//! is free, and writes each waiting CVM's position ([`waiting_message`])
//! into its status message; the database's `starting` status is what makes
//! the queue durable (a node that starts again queues those CVMs again).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// The status message of a CVM waiting for a boot slot with `ahead` boots
/// to be started before it.
pub fn waiting_message(ahead: usize) -> String {
    format!("waiting for a boot slot ({ahead} ahead)")
}

/// Keys (CVMs) waiting, each for a user `U`: round-robin between users,
/// FIFO within a user. A key is in the queue at most once.
#[derive(Debug)]
pub struct FairQueue<U, K> {
    /// The users with keys waiting, in turn order: the first one whose
    /// turn may be taken gets the next slot, then goes to the back.
    turns: VecDeque<(U, VecDeque<K>)>,
    /// Every waiting key's user.
    users: HashMap<K, U>,
}

impl<U, K> Default for FairQueue<U, K> {
    fn default() -> Self {
        Self {
            turns: VecDeque::new(),
            users: HashMap::new(),
        }
    }
}

impl<U: Clone + Eq, K: Clone + Eq + Hash> FairQueue<U, K> {
    /// How many keys wait.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether `key` waits.
    pub fn contains(&self, key: &K) -> bool {
        self.users.contains_key(key)
    }

    /// Puts `key` at the back of `user`'s line (a user not waiting yet
    /// joins the round last). A key already waiting keeps its place, and
    /// the answer is `false`.
    pub fn push(&mut self, user: U, key: K) -> bool {
        if self.users.contains_key(&key) {
            return false;
        }
        self.users.insert(key.clone(), user.clone());
        match self.turns.iter_mut().find(|(u, _)| *u == user) {
            Some((_, line)) => line.push_back(key),
            None => self.turns.push_back((user, VecDeque::from([key]))),
        }
        true
    }

    /// Takes `key` out of the queue; says whether it was waiting. A user
    /// whose line empties leaves the round.
    pub fn remove(&mut self, key: &K) -> bool {
        let Some(user) = self.users.remove(key) else {
            return false;
        };
        if let Some(i) = self.turns.iter().position(|(u, _)| *u == user) {
            self.turns[i].1.retain(|k| k != key);
            if self.turns[i].1.is_empty() {
                self.turns.remove(i);
            }
        }
        true
    }

    /// The next key to boot: the first in line of the first user, in turn
    /// order, that `may_boot` allows (a user at their own cap of boots
    /// running keeps their place). That user goes to the back of the round.
    pub fn pop(&mut self, may_boot: impl Fn(&U) -> bool) -> Option<(U, K)> {
        let i = self.turns.iter().position(|(u, _)| may_boot(u))?;
        let (user, mut line) = self.turns.remove(i)?;
        let key = line.pop_front()?;
        self.users.remove(&key);
        if !line.is_empty() {
            self.turns.push_back((user.clone(), line));
        }
        Some((user, key))
    }

    /// Every waiting key with how many keys will get a slot before it, in
    /// the order they will get one (when nothing else joins, and no user's
    /// cap holds them back).
    pub fn positions(&self) -> Vec<(K, usize)> {
        let mut order = Vec::with_capacity(self.len());
        let longest = self.turns.iter().map(|(_, l)| l.len()).max().unwrap_or(0);
        for round in 0..longest {
            for (_, line) in &self.turns {
                if let Some(k) = line.get(round) {
                    order.push((k.clone(), order.len()));
                }
            }
        }
        order
    }

    /// How many keys will get a slot before `key`, if it waits.
    pub fn ahead_of(&self, key: &K) -> Option<usize> {
        let user = self.users.get(key)?;
        let (turn, index) = self.turns.iter().enumerate().find_map(|(t, (u, line))| {
            (u == user).then(|| (t, line.iter().position(|k| k == key)))
        })?;
        let index = index?;
        // Every user's first `index` keys go before it, and so does the
        // key of this round of each user ahead of it in turn order.
        Some(
            self.turns
                .iter()
                .enumerate()
                .map(|(t, (_, line))| {
                    line.len().min(index) + usize::from(t < turn && line.len() > index)
                })
                .sum(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The order in which everything waiting gets a slot, caps ignored.
    fn drain(q: &mut FairQueue<&'static str, String>) -> Vec<String> {
        std::iter::from_fn(|| q.pop(|_| true).map(|(_, k)| k)).collect()
    }

    #[test]
    fn one_user_s_fifty_do_not_starve_another_user_s_one() {
        let mut q = FairQueue::default();
        for i in 0..50 {
            assert!(q.push("alice", format!("a{i:02}")));
        }
        // Two slots free: both go to Alice, the only one waiting.
        assert_eq!(q.pop(|_| true), Some(("alice", "a00".to_owned())));
        assert_eq!(q.pop(|_| true), Some(("alice", "a01".to_owned())));
        // Bob's one joins the round: one of Alice's goes first (her turn
        // came before he joined), then his.
        q.push("bob", "b00".to_owned());
        assert_eq!(q.ahead_of(&"b00".to_owned()), Some(1));
        assert_eq!(q.pop(|_| true), Some(("alice", "a02".to_owned())));
        assert_eq!(q.ahead_of(&"b00".to_owned()), Some(0));
        assert_eq!(q.pop(|_| true), Some(("bob", "b00".to_owned())));
        assert_eq!(q.len(), 47);
        assert!(drain(&mut q).iter().all(|k| k.starts_with('a')));
    }

    #[test]
    fn users_take_turns_and_each_user_s_line_is_first_come_first_served() {
        let mut q = FairQueue::default();
        for k in ["a1", "a2", "a3"] {
            q.push("alice", k.to_owned());
        }
        for k in ["b1", "b2"] {
            q.push("bob", k.to_owned());
        }
        q.push("carol", "c1".to_owned());
        assert_eq!(drain(&mut q), ["a1", "b1", "c1", "a2", "b2", "a3"]);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn positions_are_the_order_of_the_slots() {
        let mut q = FairQueue::default();
        for k in ["a1", "a2", "a3"] {
            q.push("alice", k.to_owned());
        }
        for k in ["b1", "b2"] {
            q.push("bob", k.to_owned());
        }
        q.push("carol", "c1".to_owned());
        let positions = q.positions();
        let expected = [
            ("a1", 0),
            ("b1", 1),
            ("c1", 2),
            ("a2", 3),
            ("b2", 4),
            ("a3", 5),
        ];
        assert_eq!(positions, expected.map(|(k, n)| (k.to_owned(), n)).to_vec());
        // `ahead_of` says the same for each key, without the whole list.
        for (k, n) in &positions {
            assert_eq!(q.ahead_of(k), Some(*n), "{k}");
        }
        assert_eq!(q.ahead_of(&"nobody".to_owned()), None);
        // And the slots go in that order.
        let order: Vec<String> = positions.into_iter().map(|(k, _)| k).collect();
        assert_eq!(drain(&mut q), order);
    }

    #[test]
    fn a_removed_key_never_boots_and_its_user_leaves_the_round_when_empty() {
        let mut q = FairQueue::default();
        q.push("alice", "a1".to_owned());
        q.push("alice", "a2".to_owned());
        q.push("bob", "b1".to_owned());
        q.push("carol", "c1".to_owned());
        assert!(q.remove(&"a1".to_owned()));
        assert!(!q.remove(&"a1".to_owned()), "removed once");
        assert!(q.remove(&"b1".to_owned()));
        assert!(!q.contains(&"b1".to_owned()));
        assert_eq!(q.ahead_of(&"c1".to_owned()), Some(1));
        assert_eq!(drain(&mut q), ["a2", "c1"]);
    }

    #[test]
    fn a_key_waits_once() {
        let mut q = FairQueue::default();
        assert!(q.push("alice", "a1".to_owned()));
        q.push("alice", "a2".to_owned());
        // Queued again (a restart of a waiting CVM): it keeps its place.
        assert!(!q.push("alice", "a1".to_owned()));
        assert_eq!(q.len(), 2);
        assert_eq!(drain(&mut q), ["a1", "a2"]);
    }

    #[test]
    fn a_user_at_their_cap_keeps_their_place_while_others_boot() {
        let mut q = FairQueue::default();
        q.push("alice", "a1".to_owned());
        q.push("alice", "a2".to_owned());
        q.push("bob", "b1".to_owned());
        q.push("bob", "b2".to_owned());
        // Alice is at her cap: Bob's go, Alice stays first in turn order.
        assert_eq!(q.pop(|u| *u != "alice"), Some(("bob", "b1".to_owned())));
        assert_eq!(q.pop(|u| *u != "alice"), Some(("bob", "b2".to_owned())));
        assert_eq!(q.pop(|u| *u != "alice"), None);
        assert_eq!(q.pop(|_| true), Some(("alice", "a1".to_owned())));
    }

    #[test]
    fn the_message_names_the_count() {
        assert_eq!(waiting_message(3), "waiting for a boot slot (3 ahead)");
    }
}
