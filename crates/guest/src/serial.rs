//! [`SerialLog`]: the CVM's serial console, as timestamped, redacted lines.

use crate::redact::Redactor;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where the boot writes its lines (stdout in a CVM; a buffer in tests).
/// Every line passes through the [`Redactor`] first.
#[derive(Clone)]
pub struct SerialLog {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
    redactor: Arc<Mutex<Redactor>>,
}

impl SerialLog {
    /// A log writing to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self {
            out: Arc::new(Mutex::new(out)),
            redactor: Arc::new(Mutex::new(Redactor::default())),
        }
    }

    /// Replaces the redactor (once the env is decrypted).
    pub fn set_redactor(&self, redactor: Redactor) {
        *self.redactor.lock().unwrap() = redactor;
    }

    /// Redacts `text` with the current redactor.
    pub fn redact(&self, text: &str) -> String {
        self.redactor.lock().unwrap().apply(text)
    }

    /// Writes one line (several if `text` has line breaks), timestamped.
    pub fn line(&self, text: &str) {
        let text = self.redact(text);
        let stamp = timestamp(SystemTime::now());
        let mut out = self.out.lock().unwrap();
        for l in text.lines() {
            let _ = writeln!(out, "[{stamp}] {l}");
        }
        let _ = out.flush();
    }
}

/// `2026-11-27T07:40:01.123Z`.
pub fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            timestamp(UNIX_EPOCH + Duration::from_millis(1_795_764_001_123)),
            "2026-11-27T07:20:01.123Z"
        );
    }
}
