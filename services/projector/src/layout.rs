//! The data directory: the views in `views-<n>/`, and `current`, a symbolic
//! link to the ones served. A blue/green rebuild builds `views-<n+1>/`
//! beside them and switches the link when it has caught up.
//!
//! A directory that holds sled files itself (what `kpictl replay` writes)
//! is served as it is, but cannot be rebuilt in place.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// Where the views of a data directory are.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
    /// False for a plain sled directory.
    switchable: bool,
}

const CURRENT: &str = "current";

impl Layout {
    /// The layout of `root`, created (with `views-1`) when it is new.
    pub fn open(root: &Path) -> anyhow::Result<Layout> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("creating the data directory {}", root.display()))?;
        let current = root.join(CURRENT);
        if current.symlink_metadata().is_ok() {
            return Ok(Layout {
                root: root.to_path_buf(),
                switchable: true,
            });
        }
        if root.join("db").exists() || root.join("conf").exists() {
            return Ok(Layout {
                root: root.to_path_buf(),
                switchable: false,
            });
        }
        let layout = Layout {
            root: root.to_path_buf(),
            switchable: true,
        };
        layout.point_current_to(&layout.views_dir(1))?;
        Ok(layout)
    }

    /// The directory of the views served now.
    pub fn current(&self) -> anyhow::Result<PathBuf> {
        if !self.switchable {
            return Ok(self.root.clone());
        }
        let link = self.root.join(CURRENT);
        let target = std::fs::read_link(&link)
            .with_context(|| format!("reading the link {}", link.display()))?;
        Ok(self.root.join(target))
    }

    /// A directory for new views beside the current ones: `views-<n+1>`,
    /// emptied if a failed rebuild left it.
    pub fn next(&self) -> anyhow::Result<PathBuf> {
        anyhow::ensure!(
            self.switchable,
            "{} holds views directly (written by kpictl replay?): a rebuild needs a data directory laid out by the projector (views-<n>/ and current); start the projector on a new data directory instead",
            self.root.display()
        );
        let highest = std::fs::read_dir(&self.root)?
            .flatten()
            .filter_map(|entry| {
                entry
                    .file_name()
                    .to_str()
                    .and_then(|name| name.strip_prefix("views-"))
                    .and_then(|number| number.parse::<u32>().ok())
            })
            .max()
            .unwrap_or(0);
        let next = self.views_dir(highest + 1);
        if next.exists() {
            std::fs::remove_dir_all(&next)
                .with_context(|| format!("removing {}", next.display()))?;
        }
        Ok(next)
    }

    fn views_dir(&self, number: u32) -> PathBuf {
        self.root.join(format!("views-{number}"))
    }

    /// Makes `views` the current views, atomically (a new link renamed over
    /// the old one).
    pub fn point_current_to(&self, views: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(views).with_context(|| format!("creating {}", views.display()))?;
        let name = views.file_name().context("a views directory has a name")?;
        let staged = self.root.join(format!("{CURRENT}.next"));
        let _ = std::fs::remove_file(&staged);
        #[cfg(unix)]
        std::os::unix::fs::symlink(name, &staged)
            .with_context(|| format!("linking {} to {}", staged.display(), views.display()))?;
        std::fs::rename(&staged, self.root.join(CURRENT)).with_context(|| {
            format!(
                "switching {} to {}",
                self.root.join(CURRENT).display(),
                views.display()
            )
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_directory_gets_views_1_and_switches_to_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::open(dir.path()).unwrap();
        assert_eq!(layout.current().unwrap(), dir.path().join("views-1"));
        let next = layout.next().unwrap();
        assert_eq!(next, dir.path().join("views-2"));
        layout.point_current_to(&next).unwrap();
        let again = Layout::open(dir.path()).unwrap();
        assert_eq!(again.current().unwrap(), dir.path().join("views-2"));
        assert_eq!(again.next().unwrap(), dir.path().join("views-3"));
    }

    #[test]
    fn a_plain_sled_directory_is_served_but_not_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("conf"), b"").unwrap();
        let layout = Layout::open(dir.path()).unwrap();
        assert_eq!(layout.current().unwrap(), dir.path());
        assert!(layout
            .next()
            .unwrap_err()
            .to_string()
            .contains("kpictl replay"));
    }
}
