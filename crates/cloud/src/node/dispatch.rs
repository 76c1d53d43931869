//! The boot queue at work: [`Node::start`] queues a CVM (its status
//! `starting`, its message "waiting for a boot slot (N ahead)"), and one
//! dispatcher task boots the next waiting CVM ([`super::queue::FairQueue`]:
//! round-robin by user, FIFO within a user) whenever fewer than
//! `max_boots` boots run and its user has fewer than `max_boots_per_user`,
//! then writes every waiting CVM's new position into its message.
//!
//! The queue lives in the node, the one process that boots; the database
//! holds what survives it: a CVM waiting is `starting`, and a node that
//! starts again queues every `starting` CVM again ([`Node::resume`]).

use super::files::BootLock;
use super::queue::waiting_message;
use super::{BOOT_LOCK_FILE, Node, NodeError};
use crate::db::{App, Cvm};
use contract::{BootOutcome, Category, CvmStatus};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How long the dispatcher waits before it tries again a CVM it could not
/// read (a busy or unreachable database).
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// How old a commit still in `provisioning` must be before the node takes
/// it as orphaned (its API process died before it asked the node to boot
/// it): far longer than an API takes from its insert to its call.
const ORPHAN_AFTER: Duration = Duration::from_secs(10);

/// How often the node looks for orphaned commits.
const ORPHAN_SCAN_EVERY: Duration = Duration::from_secs(5);

impl Node {
    /// Queues the CVM to boot, and answers at once: its status is
    /// `starting` with the message "waiting for a boot slot (N ahead)"
    /// until a slot is free. A boot of it in flight on this node is ended
    /// first (it waits for its turn again); a CVM already waiting keeps its
    /// place; one that another process boots (its state lock is held) is a
    /// conflict.
    pub async fn start(self: &Arc<Self>, cvm: &Cvm, _app: &App) -> Result<(), NodeError> {
        self.dispatching.call_once(|| {
            tokio::spawn(dispatcher(Arc::downgrade(self), self.wake.clone()));
        });
        let id = &cvm.id;
        loop {
            self.end_boot(id).await;
            let mut waiting = self.waiting.lock().await;
            if waiting.queue.contains(id) {
                return Ok(());
            }
            // Dispatched between the end above and the lock: end it again.
            if self.boots.lock().unwrap().contains_key(id) {
                continue;
            }
            if self.boot_lock_held(id) {
                return Err(NodeError::AlreadyBooting { id: id.clone() });
            }
            waiting.queue.push(cvm.user_id, id.clone());
            let ahead = waiting.queue.ahead_of(id).unwrap_or(0);
            // A CVM whose slot is free now boots at once: it waits for nothing.
            let message =
                (ahead > 0 || !self.slot_free_for(cvm.user_id)).then(|| waiting_message(ahead));
            let queued = self
                .db
                .set_status(id, CvmStatus::Starting, None, message.as_deref())
                .await;
            if !matches!(queued, Ok(true)) {
                waiting.queue.remove(id);
                // Deleted meanwhile, or the status could not be written.
                return Err(queued.err().map_or(NodeError::NoSuchCvm, NodeError::from));
            }
            let turn = waiting.next_turn;
            waiting.next_turn += 1;
            waiting.turns.insert(id.clone(), turn);
            waiting.shown.insert(id.clone(), (turn, ahead));
            drop(waiting);
            self.wake.notify_one();
            return Ok(());
        }
    }

    /// Starts the loop that boots orphaned commits: CVMs an API process
    /// committed (`provisioning`) and died before it asked the node to
    /// boot them — with API replicas behind a balancer, a replica killed
    /// mid-request. Their client was told an error (or, retrying, that the
    /// name is taken), and the CVM boots all the same, once: `start`
    /// queues a CVM at most once.
    pub fn adopt_orphans(self: &Arc<Self>) {
        let node = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(ORPHAN_SCAN_EVERY).await;
                let Some(node) = node.upgrade() else { return };
                let orphans = match node.db.orphaned_commits(ORPHAN_AFTER).await {
                    Ok(o) => o,
                    Err(e) => {
                        eprintln!("node: cannot look for orphaned commits: {e}");
                        continue;
                    }
                };
                for cvm in orphans {
                    if node.boots.lock().unwrap().contains_key(&cvm.id)
                        || node.waiting.lock().await.queue.contains(&cvm.id)
                    {
                        continue;
                    }
                    let app = match node.db.app(&cvm.app_id).await {
                        Ok(Some(app)) => app,
                        Ok(None) => continue,
                        Err(e) => {
                            eprintln!("node: cannot read the app of CVM {}: {e}", cvm.id);
                            continue;
                        }
                    };
                    match node.start(&cvm, &app).await {
                        Ok(()) => {
                            eprintln!(
                                "node: CVM {} was committed but never handed to the node (its API process stopped): booting it",
                                cvm.id
                            );
                            node.append_serial(
                                &cvm.id,
                                "node: committed, but the API that committed it stopped before asking for its boot: booting it now",
                            )
                            .await;
                        }
                        Err(NodeError::AlreadyBooting { .. } | NodeError::NoSuchCvm) => {}
                        Err(e) => eprintln!("node: cannot boot orphaned CVM {}: {e}", cvm.id),
                    }
                }
            }
        });
    }

    /// Takes the CVM `id` out of the boot queue, if it waits there: nothing
    /// boots it later.
    pub(super) async fn unqueue(&self, id: &str) {
        let mut waiting = self.waiting.lock().await;
        if waiting.queue.remove(&id.to_owned()) {
            waiting.turns.remove(id);
            waiting.shown.remove(id);
            drop(waiting);
            // The others' positions moved.
            self.wake.notify_one();
        }
    }

    /// Whether another process holds the CVM's boot lock (a boot of it that
    /// this node did not start is alive).
    fn boot_lock_held(&self, id: &str) -> bool {
        let path = self.dir(id).join("state").join(BOOT_LOCK_FILE);
        path.exists() && matches!(BootLock::try_take(&path), Ok(None))
    }

    /// Whether a boot of `user` may start now: fewer than `max_boots` run,
    /// and fewer than `max_boots_per_user` of theirs.
    fn slot_free_for(&self, user: i64) -> bool {
        let boots = self.boots.lock().unwrap();
        boots.len() < self.cfg.max_boots.max(1)
            && boots.values().filter(|b| b.user_id == user).count()
                < self.cfg.max_boots_per_user.max(1)
    }

    /// Boots waiting CVMs while slots are free, fairly between users.
    async fn dispatch_ready(self: &Arc<Self>) {
        loop {
            let mut waiting = self.waiting.lock().await;
            let next = {
                let boots = self.boots.lock().unwrap();
                if boots.len() >= self.cfg.max_boots.max(1) {
                    None
                } else {
                    let cap = self.cfg.max_boots_per_user.max(1);
                    waiting
                        .queue
                        .pop(|user| boots.values().filter(|b| b.user_id == *user).count() < cap)
                }
            };
            let Some((user, id)) = next else { return };
            waiting.turns.remove(&id);
            waiting.shown.remove(&id);
            // Still holding the queue: a stop of this CVM waits until its
            // boot is in `boots`, where the stop ends it.
            if !self.dispatch(&id).await {
                waiting.queue.push(user, id.clone());
                let turn = waiting.next_turn;
                waiting.next_turn += 1;
                waiting.turns.insert(id, turn);
                drop(waiting);
                let wake = self.wake.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(RETRY_AFTER).await;
                    wake.notify_one();
                });
                return;
            }
        }
    }

    /// Boots the CVM `id` whose turn came; `false` when it could not be
    /// read (it waits again).
    async fn dispatch(self: &Arc<Self>, id: &str) -> bool {
        let cvm = match self.db.cvm(id).await {
            Ok(Some(c)) if c.status == CvmStatus::Starting => c,
            // Stopped or deleted since: nothing to boot.
            Ok(_) => return true,
            Err(e) => {
                eprintln!("node: CVM {id} waits again: it could not be read for its boot: {e}");
                return false;
            }
        };
        let app = match self.db.app(&cvm.app_id).await {
            Ok(Some(app)) => app,
            Ok(None) => {
                let line = BootOutcome::Failed {
                    category: Category::Config,
                    message: "the CVM's app is gone".to_owned(),
                }
                .render();
                self.append_serial(id, &line).await;
                let _ = self
                    .db
                    .transition(
                        id,
                        &[CvmStatus::Starting],
                        CvmStatus::BootFailed,
                        Some(Category::Config.as_str()),
                        Some(&line),
                    )
                    .await;
                return true;
            }
            Err(e) => {
                eprintln!("node: CVM {id} waits again: its app could not be read: {e}");
                return false;
            }
        };
        match self.boot_now(&cvm, &app).await {
            Ok(()) => {}
            Err(NodeError::AlreadyBooting { .. }) => {
                self.append_serial(
                    id,
                    "another node process boots this CVM already (it holds its state lock): not booting it again",
                )
                .await
            }
            Err(e) => eprintln!("node: CVM {id} could not boot: {e}"),
        }
        true
    }

    /// Writes each waiting CVM's position into its status message, where
    /// it changed.
    async fn publish_positions(&self) {
        let changed: Vec<(String, u64, usize)> = {
            let waiting = self.waiting.lock().await;
            waiting
                .queue
                .positions()
                .into_iter()
                .filter_map(|(id, ahead)| {
                    let turn = *waiting.turns.get(&id)?;
                    (waiting.shown.get(&id) != Some(&(turn, ahead))).then_some((id, turn, ahead))
                })
                .collect()
        };
        if changed.is_empty() {
            return;
        }
        let mut written = Vec::with_capacity(changed.len());
        for (id, turn, ahead) in changed {
            // Only a CVM still `starting`: a stop meanwhile keeps its status.
            let message = waiting_message(ahead);
            if self
                .db
                .transition(
                    &id,
                    &[CvmStatus::Starting],
                    CvmStatus::Starting,
                    None,
                    Some(&message),
                )
                .await
                .is_ok()
            {
                written.push((id, turn, ahead));
            }
        }
        let mut waiting = self.waiting.lock().await;
        let mut again = false;
        for (id, turn, ahead) in written {
            if waiting.turns.get(&id) == Some(&turn) {
                waiting.shown.insert(id, (turn, ahead));
            } else if waiting.turns.contains_key(&id) {
                // Taken out and queued again while this was written: its
                // message may be this stale one; write it again.
                waiting.shown.remove(&id);
                again = true;
            }
        }
        drop(waiting);
        if again {
            self.wake.notify_one();
        }
    }
}

/// The dispatcher: boots what may boot, then updates the positions, each
/// time something wakes it; ends with the node.
async fn dispatcher(node: Weak<Node>, wake: Arc<tokio::sync::Notify>) {
    loop {
        let Some(node) = node.upgrade() else { return };
        node.dispatch_ready().await;
        node.publish_positions().await;
        drop(node);
        wake.notified().await;
    }
}
