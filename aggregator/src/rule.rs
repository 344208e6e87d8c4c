//! Rules by name: `"fedavg"`, `"fedavgm"`, `"fedadam"`, `"fedyogi"`, `"median"`,
//! `"trimmed-mean:0.1"`, `"krum:3"`, `"krum:3:5"`, `"norm-bound:5.0"`.
//!
//! Grammar: `NAME[:ARGS]`. Positional arguments for the robust rules (`trimmed-mean:BETA`,
//! `krum:F[:M]`, `norm-bound:BOUND`); `key=value` pairs separated by commas for the server
//! optimizers (`fedadam:server_lr=0.01,beta1=0.9,beta2=0.99,tau=0.001`,
//! `fedavgm:server_lr=1,momentum=0.9`), any subset, the rest at their defaults, and for the
//! screen of the coordinate-wise rules, after their positional arguments (`median:screen=3`,
//! `trimmed-mean:0.1:screen=0`).
//!
//! `Display` writes the short form (parameters at their defaults left out), `{:#}` the full
//! form, which is what a manifest should record: it stays valid if defaults change. Both
//! parse back to the same rule.

use std::fmt;
use std::str::FromStr;

use fl_core::tensors::Bundle;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::ConfigError;
use crate::contribution::Contribution;
use crate::error::AggregateError;
use crate::fedavg::FedAvg;
use crate::fedopt::{FedAdam, FedAvgM, FedYogi};
use crate::krum::Krum;
use crate::median::Median;
use crate::norm_bound::NormBound;
use crate::screen::DEFAULT_SCREEN;
use crate::state::ServerState;
use crate::strategy::{MeanRule, Strategy};
use crate::trimmed_mean::TrimmedMean;

/// The rule names [`Rule::from_str`] knows, with their arguments.
pub const KNOWN_RULES: &str = "fedavg, fedavgm[:server_lr=..,momentum=..], fedadam[:server_lr=..,beta1=..,beta2=..,tau=..], fedyogi[:...], median[:screen=..], trimmed-mean:BETA[:screen=..], krum:F[:M], norm-bound:BOUND";

/// An aggregation rule with its parameters; a [`Strategy`] itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    /// Sample-weighted mean.
    FedAvg(FedAvg),
    /// FedAvg plus server momentum.
    FedAvgM(FedAvgM),
    /// FedAvg plus a server Adam step.
    FedAdam(FedAdam),
    /// FedAvg plus a server Yogi step.
    FedYogi(FedYogi),
    /// Coordinate-wise median.
    Median(Median),
    /// Coordinate-wise trimmed mean.
    TrimmedMean(TrimmedMean),
    /// Multi-Krum.
    Krum(Krum),
    /// FedAvg of updates clipped to a norm bound.
    NormBound(NormBound),
}

impl Default for Rule {
    fn default() -> Self {
        Rule::FedAvg(FedAvg)
    }
}

/// Why a rule's text was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuleError {
    /// No rule has this name.
    #[error("unknown aggregation rule {name:?}; known: {KNOWN_RULES}")]
    Unknown {
        /// The name given.
        name: String,
    },
    /// The arguments do not parse.
    #[error("aggregation rule {input:?}: {reason}")]
    Syntax {
        /// The text given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The arguments parse but are out of range.
    #[error("aggregation rule {input:?}: {source}")]
    Invalid {
        /// The text given.
        input: String,
        /// The field out of range.
        #[source]
        source: ConfigError,
    },
}

impl Rule {
    /// The rule as a strategy.
    pub fn strategy(&self) -> &dyn Strategy {
        match self {
            Rule::FedAvg(r) => r,
            Rule::FedAvgM(r) => r,
            Rule::FedAdam(r) => r,
            Rule::FedYogi(r) => r,
            Rule::Median(r) => r,
            Rule::TrimmedMean(r) => r,
            Rule::Krum(r) => r,
            Rule::NormBound(r) => r,
        }
    }

    /// Refuses out-of-range parameters, naming the field (`rule.beta1`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            Rule::FedAvg(_) => Ok(()),
            Rule::Median(r) => r.validate(),
            Rule::FedAvgM(r) => r.validate(),
            Rule::FedAdam(r) => r.validate(),
            Rule::FedYogi(r) => r.validate(),
            Rule::TrimmedMean(r) => r.validate(),
            Rule::Krum(r) => r.validate(),
            Rule::NormBound(r) => r.validate(),
        }
    }

    /// Whether the rule carries server state from round to round.
    pub fn is_stateful(&self) -> bool {
        matches!(self, Rule::FedAvgM(_) | Rule::FedAdam(_) | Rule::FedYogi(_))
    }
}

impl Strategy for Rule {
    fn name(&self) -> &'static str {
        self.strategy().name()
    }

    fn aggregate(
        &self,
        global: &Bundle,
        contributions: &[Contribution],
        state: ServerState,
    ) -> Result<(Bundle, ServerState), AggregateError> {
        self.strategy().aggregate(global, contributions, state)
    }

    fn as_mean_rule(&self) -> Option<&dyn MeanRule> {
        self.strategy().as_mean_rule()
    }
}

/// Writes `key=value` pairs, all of them (`full`) or those that differ from the defaults.
fn write_pairs(
    f: &mut fmt::Formatter<'_>,
    name: &str,
    full: bool,
    pairs: &[(&str, f64, f64)],
) -> fmt::Result {
    f.write_str(name)?;
    let mut sep = ':';
    for &(key, value, default) in pairs {
        if full || value.to_bits() != default.to_bits() {
            write!(f, "{sep}{key}={value}")?;
            sep = ',';
        }
    }
    Ok(())
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = f.alternate();
        match self {
            Rule::FedAvg(_) => f.write_str(FedAvg::NAME),
            Rule::Median(r) => write_pairs(
                f,
                Median::NAME,
                full,
                &[("screen", r.screen, DEFAULT_SCREEN)],
            ),
            Rule::TrimmedMean(r) => write_pairs(
                f,
                &format!("{}:{}", TrimmedMean::NAME, r.beta),
                full,
                &[("screen", r.screen, DEFAULT_SCREEN)],
            ),
            Rule::Krum(Krum { f: bad, m: None }) => write!(f, "{}:{bad}", Krum::NAME),
            Rule::Krum(Krum { f: bad, m: Some(m) }) => write!(f, "{}:{bad}:{m}", Krum::NAME),
            Rule::NormBound(r) => write!(f, "{}:{}", NormBound::NAME, r.bound),
            Rule::FedAvgM(r) => {
                let d = FedAvgM::default();
                write_pairs(
                    f,
                    FedAvgM::NAME,
                    full,
                    &[
                        ("server_lr", r.server_lr, d.server_lr),
                        ("momentum", r.momentum, d.momentum),
                    ],
                )
            }
            Rule::FedAdam(r) => {
                let d = FedAdam::default();
                write_pairs(
                    f,
                    FedAdam::NAME,
                    full,
                    &[
                        ("server_lr", r.server_lr, d.server_lr),
                        ("beta1", r.beta1, d.beta1),
                        ("beta2", r.beta2, d.beta2),
                        ("tau", r.tau, d.tau),
                    ],
                )
            }
            Rule::FedYogi(r) => {
                let d = FedYogi::default();
                write_pairs(
                    f,
                    FedYogi::NAME,
                    full,
                    &[
                        ("server_lr", r.server_lr, d.server_lr),
                        ("beta1", r.beta1, d.beta1),
                        ("beta2", r.beta2, d.beta2),
                        ("tau", r.tau, d.tau),
                    ],
                )
            }
        }
    }
}

/// Parses `NAME[:ARGS]` text into a rule; see the module docs.
struct Parser<'a> {
    input: &'a str,
}

impl<'a> Parser<'a> {
    fn syntax(&self, reason: impl Into<String>) -> RuleError {
        RuleError::Syntax {
            input: self.input.to_string(),
            reason: reason.into(),
        }
    }

    fn number<T: FromStr>(&self, what: &str, text: &str) -> Result<T, RuleError> {
        text.trim()
            .parse()
            .map_err(|_| self.syntax(format!("{what} {text:?} is not a number")))
    }

    fn no_args(&self, name: &str, args: Option<&str>) -> Result<(), RuleError> {
        match args {
            None => Ok(()),
            Some(_) => Err(self.syntax(format!("{name} takes no arguments"))),
        }
    }

    fn required<'s>(&self, args: Option<&'s str>, usage: &str) -> Result<&'s str, RuleError> {
        args.filter(|a| !a.trim().is_empty())
            .ok_or_else(|| self.syntax(format!("expected {usage}")))
    }

    /// Sets fields from `key=value,...`; `fields` maps each key to its slot.
    fn pairs(&self, args: Option<&str>, fields: &mut [(&str, &mut f64)]) -> Result<(), RuleError> {
        let Some(args) = args else {
            return Ok(());
        };
        for pair in args.split(',') {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| self.syntax(format!("expected key=value, found {pair:?}")))?;
            let key = key.trim();
            let known: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
            let slot = fields
                .iter_mut()
                .find(|(k, _)| *k == key)
                .map(|(_, slot)| slot)
                .ok_or_else(|| {
                    self.syntax(format!(
                        "unknown parameter {key:?}; known: {}",
                        known.join(", ")
                    ))
                })?;
            **slot = self.number(key, value)?;
        }
        Ok(())
    }

    fn parse(&self) -> Result<Rule, RuleError> {
        let text = self.input.trim();
        let (name, args) = match text.split_once(':') {
            Some((name, args)) => (name.trim(), Some(args)),
            None => (text, None),
        };
        let rule = match name {
            FedAvg::NAME => {
                self.no_args(name, args)?;
                Rule::FedAvg(FedAvg)
            }
            Median::NAME => {
                let mut r = Median::default();
                self.pairs(args, &mut [("screen", &mut r.screen)])?;
                Rule::Median(r)
            }
            TrimmedMean::NAME => {
                let args = self.required(args, "trimmed-mean:BETA, e.g. trimmed-mean:0.1")?;
                let (beta, rest) = match args.split_once(':') {
                    Some((beta, rest)) => (beta, Some(rest)),
                    None => (args, None),
                };
                let mut r = TrimmedMean::new(self.number("beta", beta)?);
                self.pairs(rest, &mut [("screen", &mut r.screen)])?;
                Rule::TrimmedMean(r)
            }
            Krum::NAME => {
                let args = self.required(args, "krum:F or krum:F:M, e.g. krum:3")?;
                let (f, m) = match args.split_once(':') {
                    Some((f, m)) => (f, Some(self.number("m", m)?)),
                    None => (args, None),
                };
                Rule::Krum(Krum {
                    f: self.number("f", f)?,
                    m,
                })
            }
            NormBound::NAME => {
                let bound = self.required(args, "norm-bound:BOUND, e.g. norm-bound:5.0")?;
                Rule::NormBound(NormBound {
                    bound: self.number("bound", bound)?,
                })
            }
            FedAvgM::NAME => {
                let mut r = FedAvgM::default();
                self.pairs(
                    args,
                    &mut [
                        ("server_lr", &mut r.server_lr),
                        ("momentum", &mut r.momentum),
                    ],
                )?;
                Rule::FedAvgM(r)
            }
            FedAdam::NAME => {
                let mut r = FedAdam::default();
                self.pairs(
                    args,
                    &mut [
                        ("server_lr", &mut r.server_lr),
                        ("beta1", &mut r.beta1),
                        ("beta2", &mut r.beta2),
                        ("tau", &mut r.tau),
                    ],
                )?;
                Rule::FedAdam(r)
            }
            FedYogi::NAME => {
                let mut r = FedYogi::default();
                self.pairs(
                    args,
                    &mut [
                        ("server_lr", &mut r.server_lr),
                        ("beta1", &mut r.beta1),
                        ("beta2", &mut r.beta2),
                        ("tau", &mut r.tau),
                    ],
                )?;
                Rule::FedYogi(r)
            }
            _ => {
                return Err(RuleError::Unknown {
                    name: name.to_string(),
                });
            }
        };
        rule.validate().map_err(|source| RuleError::Invalid {
            input: self.input.to_string(),
            source,
        })?;
        Ok(rule)
    }
}

impl FromStr for Rule {
    type Err = RuleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Parser { input: s }.parse()
    }
}

impl Serialize for Rule {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{self:#}"))
    }
}

impl<'de> Deserialize<'de> for Rule {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_from_str_and_display() {
        for text in [
            "fedavg",
            "fedavgm",
            "fedadam",
            "fedyogi",
            "median",
            "median:screen=0",
            "median:screen=3",
            "trimmed-mean:0.1",
            "trimmed-mean:0.1:screen=0",
            "krum:3",
            "krum:3:4",
            "norm-bound:5",
            "fedadam:server_lr=0.1,tau=0.000000001",
            "fedavgm:momentum=0.5",
        ] {
            let rule: Rule = text.parse().unwrap();
            assert_eq!(rule.to_string(), text);
            let full = format!("{rule:#}");
            assert_eq!(full.parse::<Rule>().unwrap(), rule, "{full}");
        }
        assert_eq!(
            format!("{:#}", "fedyogi".parse::<Rule>().unwrap()),
            "fedyogi:server_lr=0.01,beta1=0.9,beta2=0.99,tau=0.001"
        );
        assert_eq!(
            format!("{:#}", "trimmed-mean:0.3".parse::<Rule>().unwrap()),
            "trimmed-mean:0.3:screen=2"
        );
        assert_eq!(
            "norm-bound:5.0".parse::<Rule>().unwrap().to_string(),
            "norm-bound:5"
        );
    }

    #[test]
    fn bad_rules_name_what_is_wrong() {
        let err = |s: &str| s.parse::<Rule>().unwrap_err().to_string();
        assert!(err("fedprox").starts_with("unknown aggregation rule \"fedprox\""));
        assert_eq!(
            err("trimmed-mean:0.6"),
            "aggregation rule \"trimmed-mean:0.6\": aggregator setting rule.beta = 0.6: must be in [0, 0.5)"
        );
        assert!(err("trimmed-mean").contains("expected trimmed-mean:BETA"));
        assert!(err("krum:x").contains("f \"x\" is not a number"));
        assert!(err("krum:3:0").contains("rule.m = 0"));
        assert!(err("median:1").contains("expected key=value"));
        assert!(err("median:screen=0.5").contains("rule.screen = 0.5"));
        assert!(err("trimmed-mean:0.1:screen=-1").contains("rule.screen = -1"));
        assert!(err("fedadam:beta3=1").contains("unknown parameter \"beta3\""));
        assert!(err("fedadam:beta1=1").contains("rule.beta1 = 1: must be in [0, 1)"));
        assert!(err("norm-bound:-1").contains("rule.bound = -1"));
        assert!(err("fedavgm:server_lr=0").contains("rule.server_lr = 0"));
    }
}
