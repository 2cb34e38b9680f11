//! The OpenAPI 3 document of a process, made from its route table: every route, its summary and
//! path parameters, the API key as the security scheme, and per operation the need and the roles
//! that meet it (`x-vatic-need`, `x-vatic-roles`). Served at `GET /openapi.json`.

use crate::auth::Role;
use crate::routes::{Need, Rule};
use utoipa::openapi::extensions::ExtensionsBuilder;
use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem,
};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{
    ComponentsBuilder, InfoBuilder, OpenApiBuilder, PathsBuilder, Required, ResponseBuilder,
};

/// The roles that meet `need`, by name (`anyone` for an open route).
pub fn roles(need: Need) -> Vec<&'static str> {
    if need == Need::Open {
        return vec!["anyone"];
    }
    Role::ALL
        .into_iter()
        .filter(|r| r.may(need))
        .map(Role::as_str)
        .collect()
}

fn method(rule: &Rule) -> Option<HttpMethod> {
    Some(match rule.method.as_str() {
        "GET" => HttpMethod::Get,
        "POST" => HttpMethod::Post,
        "PUT" => HttpMethod::Put,
        "PATCH" => HttpMethod::Patch,
        "DELETE" => HttpMethod::Delete,
        "HEAD" => HttpMethod::Head,
        "OPTIONS" => HttpMethod::Options,
        _ => return None,
    })
}

/// The document of `rules`, for a server named `title`.
pub fn document(title: &str, rules: &[Rule]) -> utoipa::openapi::OpenApi {
    let mut paths = PathsBuilder::new();
    for rule in rules {
        let Some(http_method) = method(rule) else {
            continue;
        };
        let mut op = OperationBuilder::new()
            .summary(Some(rule.summary))
            .tag(rule.tag)
            .operation_id(Some(format!("{} {}", rule.method, rule.path)))
            .response(
                "default",
                ResponseBuilder::new().description("the answer, or {\"error\": ...}"),
            )
            .extensions(Some(
                ExtensionsBuilder::new()
                    .add("x-vatic-need", rule.need.as_str())
                    .add("x-vatic-roles", roles(rule.need))
                    .build(),
            ));
        for name in rule
            .path
            .split('{')
            .skip(1)
            .filter_map(|p| p.split_once('}').map(|(n, _)| n))
        {
            op = op.parameter(
                ParameterBuilder::new()
                    .name(name)
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True)
                    .schema(Some(
                        utoipa::openapi::ObjectBuilder::new()
                            .schema_type(utoipa::openapi::Type::String),
                    )),
            );
        }
        if rule.need != Need::Open {
            op = op
                .security(SecurityRequirement::new("bearer", Vec::<String>::new()))
                .security(SecurityRequirement::new("api_key", Vec::<String>::new()));
        }
        paths = paths.path(rule.path.clone(), PathItem::new(http_method, op));
    }
    let components = ComponentsBuilder::new()
        .security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("vk_<id>_<secret>")
                    .description(Some("An API key: Authorization: Bearer <key>"))
                    .build(),
            ),
        )
        .security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "An API key in a header of its own",
            ))),
        )
        .build();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title(title)
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Every route of this process. x-vatic-roles names the key roles that may call an operation; a key limited to some models may call model routes for those models only.",
                ))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components))
        .build()
}
