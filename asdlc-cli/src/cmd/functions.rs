//! `asdlc functions load|status`: the protocol's Redis Functions library (see
//! [`asdlc_runtime::functions`]).

use asdlc_runtime::functions::{self, FunctionsError};

use crate::cli::FunctionsCommand;
use crate::ctx::Ctx;
use crate::error::{CliError, EXIT_OK};

/// Exit status of `status` when the library is not loaded.
const EXIT_NOT_LOADED: u8 = 1;

fn functions_error(url: &str, e: FunctionsError) -> CliError {
    match e {
        FunctionsError::Redis { ref source, .. } => CliError::redis(url, source),
        other => CliError::Failed(other.to_string()),
    }
}

pub async fn run(ctx: &mut Ctx, command: FunctionsCommand) -> Result<u8, CliError> {
    let url = ctx.url();
    let library = functions::library_name();
    match command {
        FunctionsCommand::Load => {
            functions::load(ctx.conn().await?)
                .await
                .map_err(|e| functions_error(&url, e))?;
            if ctx.json {
                ctx.out
                    .json(&serde_json::json!({ "library": library, "loaded": true }))?;
            } else {
                ctx.out.line(format_args!("loaded {library}"))?;
            }
            Ok(EXIT_OK)
        }
        FunctionsCommand::Status => {
            let reply: redis::RedisResult<String> = redis::cmd("FCALL")
                .arg(format!("{library}_version"))
                .arg(0)
                .query_async(ctx.conn().await?)
                .await;
            let loaded = match reply {
                Ok(_) => true,
                Err(e) if e.code() == Some("ERR") && e.to_string().contains("not found") => false,
                Err(e) => return Err(CliError::redis(&url, &e)),
            };
            if ctx.json {
                ctx.out
                    .json(&serde_json::json!({ "library": library, "loaded": loaded }))?;
            } else if loaded {
                ctx.out.line(format_args!("{library}: loaded"))?;
            } else {
                ctx.out.line(format_args!(
                    "{library}: not loaded (run `asdlc functions load` as an admin)"
                ))?;
            }
            Ok(if loaded { EXIT_OK } else { EXIT_NOT_LOADED })
        }
    }
}
