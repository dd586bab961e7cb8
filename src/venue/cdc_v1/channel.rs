//! Channel names: `market_<symbol>_<stream>`.

use super::vocab::INTERVALS;

/// What a channel carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Stream {
    Trades,
    Kline(String),
    Depth(u8),
    Ticker,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Channel {
    pub symbol: String,
    pub stream: Stream,
}

impl Channel {
    pub fn new(symbol: &str, stream: Stream) -> Channel {
        Channel {
            symbol: symbol.to_string(),
            stream,
        }
    }

    /// Parses `market_btcusdt_trade_ticker` and friends; None for anything else
    /// (`review`, `depth_step5`, uppercase names).
    pub fn parse(name: &str) -> Option<Channel> {
        let rest = name.strip_prefix("market_")?;
        let (symbol, stream) = if let Some(sym) = rest.strip_suffix("_trade_ticker") {
            (sym, Stream::Trades)
        } else if let Some(sym) = rest.strip_suffix("_ticker") {
            (sym, Stream::Ticker)
        } else if let Some((sym, step)) = rest.rsplit_once("_depth_step") {
            match step {
                "0" => (sym, Stream::Depth(0)),
                "1" => (sym, Stream::Depth(1)),
                "2" => (sym, Stream::Depth(2)),
                _ => return None,
            }
        } else if let Some((sym, iv)) = rest.rsplit_once("_kline_") {
            if !INTERVALS.contains(&iv) {
                return None;
            }
            (sym, Stream::Kline(iv.to_string()))
        } else {
            return None;
        };
        let valid = !symbol.is_empty()
            && symbol
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        valid.then(|| Channel::new(symbol, stream))
    }

    pub fn name(&self) -> String {
        match &self.stream {
            Stream::Trades => format!("market_{}_trade_ticker", self.symbol),
            Stream::Ticker => format!("market_{}_ticker", self.symbol),
            Stream::Depth(n) => format!("market_{}_depth_step{n}", self.symbol),
            Stream::Kline(iv) => format!("market_{}_kline_{iv}", self.symbol),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_render() {
        let table = [
            (
                "market_btcusdt_trade_ticker",
                Some(Stream::Trades),
                "btcusdt",
            ),
            ("market_btcusdt_ticker", Some(Stream::Ticker), "btcusdt"),
            ("market_e_btcusdt_ticker", Some(Stream::Ticker), "e_btcusdt"),
            (
                "market_adausdt_depth_step2",
                Some(Stream::Depth(2)),
                "adausdt",
            ),
            (
                "market_adausdt_kline_60min",
                Some(Stream::Kline("60min".into())),
                "adausdt",
            ),
            ("market_btcusdt_depth_step5", None, ""),
            ("market_btcusdt_kline_2min", None, ""),
            ("market_BTCUSDT_ticker", None, ""),
            ("review", None, ""),
            ("market__ticker", None, ""),
        ];
        for (name, stream, sym) in table {
            let got = Channel::parse(name);
            match stream {
                Some(s) => {
                    let c = got.unwrap_or_else(|| panic!("{name}"));
                    assert_eq!((c.symbol.as_str(), &c.stream), (sym, &s));
                    assert_eq!(c.name(), name);
                }
                None => assert_eq!(got, None, "{name}"),
            }
        }
    }
}
