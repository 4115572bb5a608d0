//! `/admin/dead-letters…`: the dead-letter queue as the CLI shows it — list, requeue,
//! purge — filtered by tenant and reason.

use super::error::logged;
use super::guard::Operator;
use super::{AdminApi, AdminError};
use crate::domain::TenantId;
use crate::pipeline::dead_letters::{Action, DeadLetters, Filter};
use actix_web::{web, HttpResponse};
use serde::Deserialize;

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin/dead-letters", web::get().to(list_dead_letters))
        .route(
            "/admin/dead-letters/requeue",
            web::post().to(requeue_dead_letters),
        )
        .route(
            "/admin/dead-letters/purge",
            web::post().to(purge_dead_letters),
        );
}

/// `?tenant=&reason=&limit=` of the dead-letter endpoints (`confirm=yes` for a purge).
#[derive(Deserialize)]
struct DeadLetterQuery {
    tenant: Option<TenantId>,
    reason: Option<String>,
    limit: Option<usize>,
    confirm: Option<String>,
}

impl DeadLetterQuery {
    fn filter(&self) -> Result<Filter, AdminError> {
        if self.reason.as_ref().is_some_and(|r| r.len() > 256) {
            return Err(AdminError::BadRequest("reason: at most 256 bytes".into()));
        }
        Ok(Filter {
            tenant: self.tenant.clone(),
            reason: self.reason.clone().filter(|r| !r.is_empty()),
            limit: self.limit,
        })
    }
}

fn dead_letters(api: &AdminApi) -> DeadLetters {
    DeadLetters::new(api.broker.clone(), api.work_queue.names().clone())
}

async fn list_dead_letters(
    _: Operator,
    q: web::Query<DeadLetterQuery>,
    api: web::Data<AdminApi>,
) -> Result<HttpResponse, AdminError> {
    walk_dead_letters(&q, &api, Action::List).await
}

async fn requeue_dead_letters(
    _: Operator,
    q: web::Query<DeadLetterQuery>,
    api: web::Data<AdminApi>,
) -> Result<HttpResponse, AdminError> {
    walk_dead_letters(&q, &api, Action::Requeue).await
}

async fn purge_dead_letters(
    _: Operator,
    q: web::Query<DeadLetterQuery>,
    api: web::Data<AdminApi>,
) -> Result<HttpResponse, AdminError> {
    walk_dead_letters(&q, &api, Action::Purge).await
}

/// One walk of the dead-letter queue; a purge asks for `confirm=yes`, as the CLI asks its
/// operator.
async fn walk_dead_letters(
    q: &DeadLetterQuery,
    api: &AdminApi,
    action: Action,
) -> Result<HttpResponse, AdminError> {
    let filter = q.filter()?;
    if action == Action::Purge && q.confirm.as_deref() != Some("yes") {
        return Err(AdminError::BadRequest(
            "a purge deletes dead letters for good: add confirm=yes".into(),
        ));
    }
    let walked = dead_letters(api)
        .walk(&filter, action)
        .await
        .map_err(|e| logged(AdminError::Broker(e)))?;
    Ok(HttpResponse::Ok().json(walked))
}
