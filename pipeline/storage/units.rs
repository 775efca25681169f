//! Small units read from configuration and flags.
//!
//! Owns: the duration syntax every setting uses (`500ms`, `10s`, `30m`, `12h`, `7d`), and
//! [`Bounded`], the shape in which a stage states a number setting's default and range.
//! Must not: know which setting it parses; callers name the setting in their errors.

/// A duration as a number and a unit: `500ms`, `10s`, `30m`, `12h`, `7d` (zero allowed).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration like 500ms, 10s, 30m, 12h or 7d"))?;
    let seconds = |n: u64| std::time::Duration::from_secs(number.saturating_mul(n));
    match unit {
        "ms" => Ok(std::time::Duration::from_millis(number)),
        "s" => Ok(seconds(1)),
        "m" => Ok(seconds(60)),
        "h" => Ok(seconds(3600)),
        "d" => Ok(seconds(86_400)),
        _ => Err(format!("'{text}': the unit must be ms, s, m, h or d")),
    }
}

/// A number setting as its stage states it: the default and the accepted range, in one
/// place; configuration only reads the value and asks [`Bounded::check`].
#[derive(Debug, Clone, Copy)]
pub struct Bounded<T> {
    pub default: T,
    pub min: T,
    pub max: T,
}

impl<T: PartialOrd + Copy + std::fmt::Display> Bounded<T> {
    /// `value`, or the default when unset; an error message when outside the range.
    pub fn check(&self, value: Option<T>) -> Result<T, String> {
        let value = value.unwrap_or(self.default);
        match value >= self.min && value <= self.max {
            true => Ok(value),
            false => Err(format!("{value} is outside {}..={}", self.min, self.max)),
        }
    }
}
