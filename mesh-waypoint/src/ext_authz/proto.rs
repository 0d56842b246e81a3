//! The messages of Envoy's external authorization API
//! (`envoy.service.auth.v3.Authorization/Check`), from the `envoy-types`
//! crate (generated from Envoy's published protos, on our tonic and prost):
//! the waypoint sends and reads them, the tests' authorizer serves them.
pub use envoy_types::pb::{
    envoy::{
        config::core::v3::{
            Address, HeaderValue, HeaderValueOption, SocketAddress, address, socket_address,
        },
        service::auth::v3::{
            AttributeContext, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
            attribute_context, authorization_server, check_response,
        },
        r#type::v3::HttpStatus,
    },
    google::{protobuf::BoolValue, rpc::Status},
};

/// The gRPC method the waypoint calls.
pub const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";
