//! The personal-data rules (Decree 13/2023/NĐ-CP on personal data
//! protection).
//!
//! The members of a payload that hold personal data are never read into
//! an event, stored, logged or quoted in an error: `ChuHoSo`,
//! `SoGiayToChuHoSo`, `DinhDanhCHS`, `Email`, `SoDienThoai`, `Fax`,
//! `ThongTinKhac`, `MaDoiTuong`, `TrichYeuHoSo`, file names and URLs,
//! handler names. No code names them: the mapping reads only the members
//! the events need (a result file's `DuongDanTepTinKetQua` only for
//! whether it is there), gives every withdrawal a fixed `reason`, and
//! refuses a field code holding a run of 9 digits or more (a phone or
//! identity-card number). What is left is personal data sent in the wrong
//! member: an error quotes a value only through [`shown`], which quotes it
//! only when it looks like a date or a code.

/// The most characters of a value quoted in an error.
const MAX_QUOTED_CHARS: usize = 40;

/// What a value quoted in an error must look like.
#[derive(Debug, Clone, Copy)]
pub(super) enum Shown {
    /// `yyyyMMddHHmmss`: exactly 14 digits.
    Date,
    /// Letters, digits and `-._/`; with 9 digits or more only when it has
    /// a letter too (`000.00.31.H31`), never like a phone or
    /// identity-card number sent in the wrong member (`0912.345.678`).
    Code,
}

/// A value for an error message: quoted when it looks like what it should
/// be, else only its length, so that personal data sent in the wrong
/// member is never echoed.
pub(super) fn shown(text: &str, like: Shown) -> String {
    let chars = text.chars().count();
    let looks_right = match like {
        Shown::Date => chars == 14 && text.bytes().all(|b| b.is_ascii_digit()),
        Shown::Code => {
            let digits = text.bytes().filter(u8::is_ascii_digit).count();
            let has_letter = text.bytes().any(|b| b.is_ascii_alphabetic());
            chars <= MAX_QUOTED_CHARS
                && (digits < 9 || has_letter)
                && text
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '/'))
        }
    };
    if looks_right {
        format!("`{text}`")
    } else {
        format!("a value of {chars} characters")
    }
}
