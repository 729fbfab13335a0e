// service layer, security: transport (TLS, reload, loopback rule), authentication, authorization
// policy, limits and tolerant decoding. See README "Security".
export * from './policy';
export * from './identity';
export * from './tls';
export * from './limits';
export * from './decode';
export * from './guard';
