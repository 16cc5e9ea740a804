//! `asdlc tenant provision|revoke|sync`: one Redis ACL user per tenant, on every node (see
//! [`asdlc_runtime::acl`]).

use std::io::BufRead;

use asdlc_runtime::TenantId;
use asdlc_runtime::acl::{self, AclError, AclReport, TenantAcl, TenantCredentials, UserChange};
use asdlc_runtime::functions::FunctionsError;

use crate::cli::TenantCommand;
use crate::ctx::Ctx;
use crate::error::{CliError, EXIT_OK};

fn tenant_id(id: &str) -> Result<TenantId, CliError> {
    TenantId::new(id).map_err(|e| CliError::Usage(e.to_string()))
}

fn acl_error(url: &str, e: AclError) -> CliError {
    match e {
        AclError::Redis { ref source, .. } => CliError::redis(url, source),
        AclError::Functions(FunctionsError::Redis { ref source, .. }) => {
            CliError::redis(url, source)
        }
        e @ (AclError::Unreached { .. } | AclError::Record { .. } | AclError::Functions(_)) => {
            CliError::Failed(e.to_string())
        }
        other => CliError::Usage(other.to_string()),
    }
}

fn change_name(change: UserChange) -> &'static str {
    match change {
        UserChange::Created => "restored",
        UserChange::Updated => "updated",
        UserChange::Unchanged => "unchanged",
        UserChange::Deleted => "deleted",
        UserChange::Unrecorded => "unrecorded",
    }
}

fn report_json(report: &AclReport) -> serde_json::Value {
    serde_json::json!({
        "nodes": report.nodes,
        "changes": report.changes.iter().map(|c| serde_json::json!({
            "node": c.node,
            "role": c.role.to_string(),
            "user": c.user,
            "change": change_name(c.change),
        })).collect::<Vec<_>>(),
        "unreached": report.unreached.iter().map(|f| serde_json::json!({
            "node": f.node,
            "role": f.role.to_string(),
            "error": f.error.to_string(),
        })).collect::<Vec<_>>(),
    })
}

fn print_report(ctx: &mut Ctx, report: &AclReport) -> Result<(), CliError> {
    if ctx.json {
        return ctx.out.json(&report_json(report));
    }
    for c in report
        .changes
        .iter()
        .filter(|c| c.change != UserChange::Unchanged)
    {
        ctx.out.line(format_args!(
            "{} ({}): {} {}",
            c.node,
            c.role,
            c.user,
            change_name(c.change)
        ))?;
    }
    for f in &report.unreached {
        ctx.out.line(format_args!(
            "{} ({}): UNREACHED: {}",
            f.node, f.role, f.error
        ))?;
    }
    let count = |c| report.changes_of(c).count();
    ctx.out.line(format_args!(
        "{} node(s) reached, {} unreached: {} restored, {} updated, {} unchanged, {} deleted, \
         {} unrecorded",
        report.nodes.len(),
        report.unreached.len(),
        count(UserChange::Created),
        count(UserChange::Updated),
        count(UserChange::Unchanged),
        count(UserChange::Deleted),
        count(UserChange::Unrecorded),
    ))?;
    Ok(())
}

fn print_credentials(
    ctx: &mut Ctx,
    tenant: &TenantId,
    creds: &TenantCredentials,
) -> Result<(), CliError> {
    let tenant_url = creds
        .url(&ctx.config.redis_url)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    if ctx.json {
        ctx.out.json(&serde_json::json!({
            "tenant": tenant.as_str(),
            "username": creds.username(),
            "password": creds.expose_password(),
            "url": tenant_url.expose(),
            "keys": acl::tenant_key_pattern(tenant),
            "nodes": creds.nodes(),
        }))?;
    } else {
        ctx.out.line(format_args!("tenant:   {tenant}"))?;
        ctx.out
            .line(format_args!("user:     {}", creds.username()))?;
        ctx.out
            .line(format_args!("password: {}", creds.expose_password()))?;
        ctx.out.line(format_args!(
            "keys:     {}",
            acl::tenant_key_pattern(tenant)
        ))?;
        ctx.out
            .line(format_args!("url:      {}", tenant_url.expose()))?;
        ctx.out
            .line(format_args!("nodes:    {}", creds.nodes().join(" ")))?;
    }
    Ok(())
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
            match grant.provision(ctx.conn().await?, &password).await {
                Ok(creds) => print_credentials(ctx, &tenant, &creds)?,
                Err(AclError::Unreached {
                    action,
                    report,
                    credentials: Some(creds),
                }) => {
                    // The user is on the reached nodes and in the record: hand out the
                    // credentials, and fail so the operator runs a sync.
                    print_credentials(ctx, &tenant, &creds)?;
                    return Err(acl_error(
                        &url,
                        AclError::Unreached {
                            action,
                            report,
                            credentials: None,
                        },
                    ));
                }
                Err(e) => return Err(acl_error(&url, e)),
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
        TenantCommand::Sync => match acl::sync_tenants(ctx.conn().await?).await {
            Ok(report) => {
                print_report(ctx, &report)?;
                Ok(EXIT_OK)
            }
            Err(AclError::Unreached {
                action,
                report,
                credentials,
            }) => {
                print_report(ctx, &report)?;
                Err(acl_error(
                    &url,
                    AclError::Unreached {
                        action,
                        report,
                        credentials,
                    },
                ))
            }
            Err(e) => Err(acl_error(&url, e)),
        },
    }
}
