//! `asdlc tenant provision|revoke`: one Redis ACL user per tenant (see
//! [`asdlc_runtime::acl`]).

use std::io::BufRead;

use asdlc_runtime::TenantId;
use asdlc_runtime::acl::{self, AclError, TenantAcl};

use crate::cli::TenantCommand;
use crate::ctx::Ctx;
use crate::error::{CliError, EXIT_OK};

fn tenant_id(id: &str) -> Result<TenantId, CliError> {
    TenantId::new(id).map_err(|e| CliError::Usage(e.to_string()))
}

fn acl_error(url: &str, e: AclError) -> CliError {
    match e {
        AclError::Redis { ref source, .. } => CliError::redis(url, source),
        other => CliError::Usage(other.to_string()),
    }
}

pub async fn run(ctx: &mut Ctx, command: TenantCommand) -> Result<u8, CliError> {
    let url = ctx.url();
    match command {
        TenantCommand::Provision {
            id,
            password_stdin,
            allow_client_list,
            allow_commands,
        } => {
            let tenant = tenant_id(&id)?;
            let password = if password_stdin {
                let mut line = String::new();
                std::io::stdin()
                    .lock()
                    .read_line(&mut line)
                    .map_err(|e| CliError::Usage(format!("cannot read the password: {e}")))?;
                line.trim_end_matches(['\r', '\n']).to_owned()
            } else {
                acl::generate_password()
            };
            let mut grant = TenantAcl::new(tenant.clone()).allow_client_list(allow_client_list);
            for c in allow_commands {
                grant = grant.command(c);
            }
            let creds = grant
                .provision(ctx.conn().await?, &password)
                .await
                .map_err(|e| acl_error(&url, e))?;
            let tenant_url = creds
                .url(&ctx.config.redis_url)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            if ctx.json {
                ctx.out.json(&serde_json::json!({
                    "tenant": tenant.as_str(),
                    "username": creds.username(),
                    "password": creds.expose_password(),
                    "url": tenant_url.expose(),
                    "keys": acl::tenant_key_pattern(&tenant),
                }))?;
            } else {
                ctx.out.line(format_args!("tenant:   {tenant}"))?;
                ctx.out
                    .line(format_args!("user:     {}", creds.username()))?;
                ctx.out
                    .line(format_args!("password: {}", creds.expose_password()))?;
                ctx.out.line(format_args!(
                    "keys:     {}",
                    acl::tenant_key_pattern(&tenant)
                ))?;
                ctx.out
                    .line(format_args!("url:      {}", tenant_url.expose()))?;
            }
            Ok(EXIT_OK)
        }
        TenantCommand::Revoke { id } => {
            let tenant = tenant_id(&id)?;
            let existed = acl::revoke_tenant(ctx.conn().await?, &tenant)
                .await
                .map_err(|e| acl_error(&url, e))?;
            if ctx.json {
                ctx.out.json(&serde_json::json!({
                    "tenant": tenant.as_str(),
                    "username": acl::tenant_username(&tenant),
                    "revoked": existed,
                }))?;
            } else if existed {
                ctx.out.line(format_args!(
                    "revoked {} (its connections are closed; its keys stay)",
                    acl::tenant_username(&tenant)
                ))?;
            } else {
                return Err(CliError::NotFound(format!(
                    "no ACL user {} to revoke",
                    acl::tenant_username(&tenant)
                )));
            }
            Ok(EXIT_OK)
        }
    }
}
