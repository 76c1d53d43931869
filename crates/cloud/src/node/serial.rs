//! The serial log: what a CVM's boot agent printed, and the node's own
//! `[node]` lines, in a file that rotates itself past its size and stays
//! 0600.

use super::Node;
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

/// The serial log is rotated past this size (`serial.log` →
/// `serial.log.1`, one old file kept).
pub const SERIAL_LOG_MAX_BYTES: u64 = 8 << 20;

/// Opens a log for appending, mode 0600.
async fn open_log(path: &Path) -> std::io::Result<tokio::fs::File> {
    let f = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .await?;
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .await?;
    Ok(f)
}

/// A serial log that rotates itself: past `max` bytes, `serial.log` becomes
/// `serial.log.1` (replacing the older one) and a new `serial.log` starts.
/// Both stay 0600.
pub struct SerialFile {
    path: PathBuf,
    file: tokio::fs::File,
    size: u64,
    max: u64,
}

impl SerialFile {
    /// Opens (creating) the log at `path` for appending.
    pub async fn open(path: &Path, max: u64) -> std::io::Result<Self> {
        let file = open_log(path).await?;
        let size = file.metadata().await?.len();
        Ok(Self {
            path: path.to_owned(),
            file,
            size,
            max,
        })
    }

    /// Appends one line (a newline is added), rotating first if the line
    /// would take the file past its size.
    pub async fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        let len = line.len() as u64 + 1;
        if self.size > 0 && self.size + len > self.max {
            self.file.flush().await?;
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            tokio::fs::rename(&self.path, &old).await?;
            self.file = open_log(&self.path).await?;
            self.size = 0;
        }
        self.file.write_all(format!("{line}\n").as_bytes()).await?;
        self.size += len;
        Ok(())
    }

    /// Flushes what was written.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush().await
    }
}

impl Node {
    /// Appends a `[node] …` line to the CVM's serial log.
    pub(super) async fn append_serial(&self, id: &str, text: &str) {
        if let Ok(mut f) = SerialFile::open(&self.serial_log_path(id), SERIAL_LOG_MAX_BYTES).await {
            let _ = f.write_line(&format!("[node] {text}")).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::files::temp;
    use super::*;

    #[tokio::test]
    async fn serial_log_rotates_past_its_size_and_stays_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = temp("serial");
        let path = d.join("serial.log");
        let mut log = SerialFile::open(&path, 1000).await.unwrap();
        for i in 0..100 {
            log.write_line(&format!("line {i:04} {}", "x".repeat(20)))
                .await
                .unwrap();
        }
        log.flush().await.unwrap();
        let old = d.join("serial.log.1");
        let (now, before) = (
            std::fs::read_to_string(&path).unwrap(),
            std::fs::read_to_string(&old).unwrap(),
        );
        assert!(
            now.len() <= 1000 && before.len() <= 1000,
            "{} {}",
            now.len(),
            before.len()
        );
        assert!(now.ends_with(&format!("line 0099 {}\n", "x".repeat(20))));
        // The two files hold the newest lines, in order, none cut.
        let all: Vec<&str> = before.lines().chain(now.lines()).collect();
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        assert!(all.iter().all(|l| l.len() == 30));
        assert!(!std::fs::exists(d.join("serial.log.2")).unwrap());
        for p in [&path, &old] {
            let mode = std::fs::metadata(p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", p.display());
        }
        // Reopened, it keeps counting from the file's size.
        let mut again = SerialFile::open(&path, 1000).await.unwrap();
        for _ in 0..40 {
            again.write_line(&"y".repeat(29)).await.unwrap();
        }
        again.flush().await.unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() <= 1000);
        assert!(std::fs::read_to_string(&old).unwrap().contains("line 0099"));
        std::fs::remove_dir_all(d).unwrap();
    }
}
