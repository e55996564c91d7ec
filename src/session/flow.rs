//! Publisher flow control's one waiting primitive: wait for a "released"
//! notification, bounded, unless the reason to wait is already gone. The
//! frame loop uses it to pause a publisher while a queue it filled drains,
//! and `ConnectionHandle::drained` while a consumer's socket backlog drains.
//!
//! Owns: the register-then-check-then-wait order that makes such waits
//! lose no wakeup. The decisions (when a publisher is held back, for how
//! long) belong to the frame loop in `connection`.

use std::time::Duration;

use tokio::sync::futures::Notified;

/// Waits for `released` for at most `max`, unless `held()` says there is
/// nothing to wait for. `released` is registered before `held` is looked
/// at, so a notification sent in between is not lost.
pub async fn wait_unless_released(
    released: Notified<'_>,
    held: impl FnOnce() -> bool,
    max: Duration,
) {
    tokio::pin!(released);
    released.as_mut().enable();
    if held() {
        let _ = tokio::time::timeout(max, released).await;
    }
}
