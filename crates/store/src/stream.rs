//! Where the views stand against the stream: the identity of the stream
//! they were folded from, the checkpoint, the last message and the running
//! totals.

use crate::error::{corrupt, StoreError};
use crate::{keys, FoldTotals, Store};

impl Store {
    /// Checks that the stream about to be read is the one the views were
    /// folded from (same creation time, nothing unfolded removed from its
    /// start), and records it when the views are new.
    pub fn adopt_stream(&self, created: &str, first_sequence: u64) -> Result<(), StoreError> {
        let checkpoint = self.checkpoint()?;
        let folded_from = self.views.get(keys::STREAM)?;
        if checkpoint > 0 {
            if let Some(folded_from) = &folded_from {
                if folded_from.as_ref() != created.as_bytes() {
                    return Err(StoreError::StreamChanged {
                        folded_from: String::from_utf8_lossy(folded_from).into_owned(),
                        now: created.to_owned(),
                    });
                }
            }
            if first_sequence > checkpoint + 1 {
                return Err(StoreError::StreamGap {
                    first: first_sequence,
                    checkpoint,
                });
            }
        }
        if folded_from.as_deref() != Some(created.as_bytes()) {
            self.views.insert(keys::STREAM, created.as_bytes())?;
        }
        Ok(())
    }

    /// The stream sequence and store time (Unix nanoseconds, 0 if unknown)
    /// of the last message folded.
    pub fn last_message(&self) -> Result<Option<(u64, i64)>, StoreError> {
        let Some(bytes) = self.views.get(keys::LAST_MESSAGE)? else {
            return Ok(None);
        };
        let array: [u8; 16] = bytes
            .as_ref()
            .try_into()
            .map_err(|_| corrupt(keys::LAST_MESSAGE, "not 16 bytes"))?;
        let sequence = u64::from_be_bytes(array[..8].try_into().unwrap_or_default());
        let nanos = i64::from_be_bytes(array[8..].try_into().unwrap_or_default());
        Ok(Some((sequence, nanos)))
    }

    /// The last stream sequence folded (0 for new views).
    pub fn checkpoint(&self) -> Result<u64, StoreError> {
        read_u64(self.views.get(keys::CHECKPOINT)?, keys::CHECKPOINT)
    }

    /// The checkpoint the next fold starts after: that of the commit in
    /// flight, if one is.
    pub(crate) fn folded_checkpoint(&self) -> Result<u64, StoreError> {
        read_u64(self.stored(keys::CHECKPOINT)?, keys::CHECKPOINT)
    }

    pub fn totals(&self) -> Result<FoldTotals, StoreError> {
        decode_totals(self.views.get(keys::STATS)?)
    }

    /// The totals the next fold adds to: those of the commit in flight,
    /// if one is.
    pub(crate) fn folded_totals(&self) -> Result<FoldTotals, StoreError> {
        decode_totals(self.stored(keys::STATS)?)
    }
}

fn decode_totals(stored: Option<sled::IVec>) -> Result<FoldTotals, StoreError> {
    match stored {
        None => Ok(FoldTotals::default()),
        Some(bytes) => postcard::from_bytes(&bytes).map_err(|err| corrupt(keys::STATS, err)),
    }
}

fn read_u64(stored: Option<sled::IVec>, key: &[u8]) -> Result<u64, StoreError> {
    match stored {
        None => Ok(0),
        Some(bytes) => {
            let array: [u8; 8] = bytes
                .as_ref()
                .try_into()
                .map_err(|_| corrupt(key, "not 8 bytes"))?;
            Ok(u64::from_be_bytes(array))
        }
    }
}
