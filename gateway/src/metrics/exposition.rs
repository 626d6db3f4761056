//! The Prometheus text exposition format. Every family ringgate exposes is described once
//! as a [`Family`] (name, help, type, label names) and written through it: its `# HELP`
//! and `# TYPE` lines, its samples with their label sets, and histogram series. Label
//! values are escaped here and nowhere else.

use std::fmt::{self, Display, Write};

/// A family's Prometheus type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (resets at restart).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Cumulative buckets with a sum and a count.
    Histogram,
}

impl Kind {
    /// The name `# TYPE` gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family: everything written about it but its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    /// Metric name, `ringgate_...`.
    pub name: &'static str,
    /// The `# HELP` text.
    pub help: &'static str,
    /// The `# TYPE`.
    pub kind: Kind,
    /// Label names, in the order every sample gives their values.
    pub labels: &'static [&'static str],
}

impl Family {
    /// A family of `kind`.
    pub const fn new(
        kind: Kind,
        name: &'static str,
        labels: &'static [&'static str],
        help: &'static str,
    ) -> Self {
        Self {
            name,
            help,
            kind,
            labels,
        }
    }

    /// Writes the `# HELP` and `# TYPE` lines; once, before the family's samples.
    pub fn header(&self, o: &mut String) -> fmt::Result {
        writeln!(o, "# HELP {} {}", self.name, self.help)?;
        writeln!(o, "# TYPE {} {}", self.name, self.kind.as_str())
    }

    /// Writes one sample: `values` are the label values, in the order of
    /// [`Family::labels`].
    pub fn sample(
        &self,
        o: &mut String,
        values: &[&dyn Display],
        value: impl Display,
    ) -> fmt::Result {
        self.series(o, "", values, None, value)
    }

    /// Writes the header and one sample without labels.
    pub fn single(&self, o: &mut String, value: impl Display) -> fmt::Result {
        self.header(o)?;
        self.sample(o, &[], value)
    }

    /// Writes one histogram series: a cumulative `_bucket` per upper bound in `bounds`
    /// and `+Inf` (`counts` has one more entry than `bounds`), `_sum` and `_count`;
    /// nothing when nothing was counted.
    pub fn histogram_series(
        &self,
        o: &mut String,
        values: &[&dyn Display],
        bounds: &[f64],
        counts: &[u64],
        sum: f64,
    ) -> fmt::Result {
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return Ok(());
        }
        let mut cumulative = 0;
        for (le, n) in bounds.iter().zip(counts) {
            cumulative += n;
            self.series(o, "_bucket", values, Some(le), cumulative)?;
        }
        self.series(o, "_bucket", values, Some(&"+Inf"), total)?;
        self.series(o, "_sum", values, None, sum)?;
        self.series(o, "_count", values, None, total)
    }

    /// `name{labels[,le="..."]} value`, the braces left out when there are no labels.
    fn series(
        &self,
        o: &mut String,
        suffix: &str,
        values: &[&dyn Display],
        le: Option<&dyn Display>,
        value: impl Display,
    ) -> fmt::Result {
        debug_assert_eq!(values.len(), self.labels.len(), "{}", self.name);
        o.push_str(self.name);
        o.push_str(suffix);
        let pairs = self.labels.iter().copied().zip(values.iter().copied());
        let mut pairs = pairs.chain(le.map(|le| ("le", le))).peekable();
        if pairs.peek().is_some() {
            o.push('{');
            for (i, (name, v)) in pairs.enumerate() {
                if i > 0 {
                    o.push(',');
                }
                o.push_str(name);
                o.push_str("=\"");
                write!(Escaped(o), "{v}")?;
                o.push('"');
            }
            o.push('}');
        }
        writeln!(o, " {value}")
    }
}

/// A label value as the Prometheus text format needs it: backslash, double quote and line
/// feed escaped, written without allocating.
pub fn label(value: &str) -> Label<'_> {
    Label(value)
}

/// See [`label`].
#[derive(Debug, Clone, Copy)]
pub struct Label<'a>(&'a str);

impl Display for Label<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Escaped(f).write_str(self.0)
    }
}

/// Escapes what is written through it into a label value.
struct Escaped<'a, W: Write>(&'a mut W);

impl<W: Write> Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some(i) = rest.find(['\\', '"', '\n']) {
            self.0.write_str(&rest[..i])?;
            match rest.as_bytes()[i] {
                b'\n' => self.0.write_str("\\n")?,
                b'"' => self.0.write_str("\\\"")?,
                _ => self.0.write_str("\\\\")?,
            }
            rest = &rest[i + 1..];
        }
        self.0.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::{Kind::*, *};

    const F: Family = Family::new(Counter, "x_total", &["a", "b"], "Help.");

    #[test]
    fn header_samples_and_histograms() {
        let mut o = String::new();
        F.header(&mut o).unwrap();
        F.sample(&mut o, &[&1, &"q\"\\\n"], 5).unwrap();
        Family::new(Gauge, "g", &[], "G.")
            .single(&mut o, 2)
            .unwrap();
        let h = Family::new(Histogram, "h_seconds", &["core"], "H.");
        h.histogram_series(&mut o, &[&0], &[0.5, 1.0], &[1, 0, 2], 1.5)
            .unwrap();
        h.histogram_series(&mut o, &[&1], &[0.5, 1.0], &[0, 0, 0], 0.0)
            .unwrap();
        assert_eq!(
            o,
            "# HELP x_total Help.\n# TYPE x_total counter\n\
             x_total{a=\"1\",b=\"q\\\"\\\\\\n\"} 5\n\
             # HELP g G.\n# TYPE g gauge\ng 2\n\
             h_seconds_bucket{core=\"0\",le=\"0.5\"} 1\n\
             h_seconds_bucket{core=\"0\",le=\"1\"} 1\n\
             h_seconds_bucket{core=\"0\",le=\"+Inf\"} 3\n\
             h_seconds_sum{core=\"0\"} 1.5\n\
             h_seconds_count{core=\"0\"} 3\n"
        );
    }
}
