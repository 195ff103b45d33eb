use afp_format::{Format, Grid, ZeroMode};
use anyhow::Result;
use serde::Serialize;

#[derive(clap::Args)]
pub struct Args {
    /// The format: `E3M2`, `uE2M3` (unsigned), `fp4-e2m1`, `fp6-e2m3`, `fp6-e3m2`, `fp8-e4m3`,
    /// `fp8-e5m2` (these imply the standard format's offset), or `int2`..`int8` (E = 0, integer levels).
    #[arg(value_parser = parse_format)]
    format: (Format, i32),
    /// Exponent offset t (default: the one the format name implies, else 0).
    #[arg(long, allow_hyphen_values = true)]
    offset: Option<i32>,
    /// How the zero exponent field is read.
    #[arg(long, default_value = "subnormal", value_parser = parse_zero_mode)]
    zero_mode: ZeroMode,
    /// --json prints {"format", "zero_mode", "offset", "bits", "levels"}.
    #[command(flatten)]
    out: crate::common::OutputArgs,
}

fn parse_format(s: &str) -> Result<(Format, i32), String> {
    Format::parse_spec(s).map_err(|e| e.to_string())
}

fn parse_zero_mode(s: &str) -> Result<ZeroMode, String> {
    s.parse()
        .map_err(|e: afp_format::FormatError| e.to_string())
}

#[derive(Serialize)]
struct LevelsJson<'a> {
    format: String,
    zero_mode: &'a str,
    offset: i32,
    bits: u32,
    levels: &'a [f32],
}

pub fn run(args: &Args) -> Result<()> {
    let (format, implied) = args.format;
    let format = format.with_zero_mode(args.zero_mode);
    let offset = args.offset.unwrap_or(implied);
    let grid = Grid::new(format, offset)?;
    let levels = grid.levels();
    if args.out.json {
        let out = LevelsJson {
            format: format.name(),
            zero_mode: args.zero_mode.name(),
            offset,
            bits: format.bits(),
            levels: &levels,
        };
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!(
            "{} ({} bits, {} zero mode, offset {}): {} levels, max {}, smallest positive {}",
            format.name(),
            format.bits(),
            args.zero_mode.name(),
            offset,
            levels.len(),
            grid.max(),
            grid.min_positive()
        );
        let text: Vec<String> = levels.iter().map(|v| v.to_string()).collect();
        println!("{}", text.join(" "));
    }
    Ok(())
}
